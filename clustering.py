"""Louvain community detection from scratch: modularity, local moves, aggregation (Blondel et al. 2008).

AT-RL groups a response's tokens by how alike their image-attention patterns are (DESIGN §2.4-2.5): the
tokens are the nodes of a weighted graph, and Louvain splits it into communities without being told how many.

Modularity (matrix convention: A is the symmetric weighted adjacency, self-loop A_ii counted once):

    k_i = sum_j A_ij          (degree)         2m = sum_i k_i        (total weight, each edge counted twice)
    Q   = 1/(2m) * sum_ij [ A_ij - gamma * k_i k_j / (2m) ] * [c_i == c_j]
        = sum_c [ in_c / (2m) - gamma * (tot_c / (2m))^2 ]    in_c = sum of A_ij inside c, tot_c = sum of k_i in c

Q is the edge weight inside communities minus what a random graph with the same degrees would put there;
gamma (resolution) > 1 favours smaller communities, < 1 larger ones.

Gain of moving an isolated node i into community c (k_i,c = weight from i to the nodes of c, i excluded):

    dQ(i -> c) = ( k_i,c - gamma * tot_c * k_i / (2m) ) / m

Phase 1 (local moves): visit the nodes in a seeded random order; take each node out of its community and put
it in the neighbouring community with the largest dQ (staying wins ties); repeat until no node moves. We keep
the nodes to visit in a queue: a node that moves re-queues its neighbours outside its new community, the only
nodes whose gains it changed by more than a tot_c shift (Ozaki et al. 2016; Leiden's fast local move); this
skips re-checking settled regions: 1.1x (n = 256) to 2.8x (n = 4096) faster than full sweeps on our kNN
benchmark graphs, at the same Q.
Phase 2 (aggregation): each community becomes one node; the coarse edge C-D weighs sum_{i in C, j in D} A_ij
and the weight inside C becomes a self-loop, so Q of the coarse graph equals Q of the partition. Repeat both
phases on the coarse graph until phase 1 moves nothing; the labels are the composition of all levels.

Worked example (also a test): two triangles {0,1,2} and {3,4,5} joined by the edge 2-3, so m = 7.
Splitting them gives in_c = 6, tot_c = 7 for each, Q = 2 * (6/14 - (7/14)^2) = 5/14 = 0.3571.
Node 3 (k = 3) weighing its options: back into {4,5} (k_3,c = 2, tot_c = 4) gains (2 - 4*3/14)/7 = +0.163,
into {0,1,2} (k_3,c = 1, tot_c = 7) gains (1 - 7*3/14)/7 = -0.071, so it stays with 4 and 5.

    >>> A = torch.zeros(6, 6)
    >>> for i, j in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5), (2, 3)]: A[i, j] = A[j, i] = 1.0
    >>> louvain(A).tolist()
    [0, 0, 0, 1, 1, 1]
    >>> round(modularity(A, torch.tensor([0, 0, 0, 1, 1, 1])), 4)
    0.3571

Where we depart from the paper / networkx:
1. A move must gain dQ > TOL (1e-10), phase 1 makes at most MAX_SWEEPS * n visits and there are at most
   MAX_LEVELS levels, so float ties can never make two nodes swap back and forth forever.
2. Phase 1 revisits only the neighbours of moved nodes (the queue above) instead of sweeping all nodes.
3. Self-loops use the matrix convention (A_ii once in k_i); networkx counts a self-loop twice in degrees.
   The two agree on graphs without self-loops, which is what AT-RL builds.
4. A graph with no edges (2m = 0) has undefined Q: we return 0.0 and put every node in its own cluster.
5. Random node order is drawn per level from a 64-bit LCG seeded by `seed` (graph b of a batch by seed + b),
   so labels depend on the seed only, never on the number of threads.

References: V. Blondel, J.-L. Guillaume, R. Lambiotte, E. Lefebvre, "Fast unfolding of communities in large
networks", J. Stat. Mech. (2008) P10008, Eq. 2; N. Ozaki, H. Tezuka, M. Inaba, "A simple acceleration method
for the Louvain algorithm", IJCEE 8(3) 2016; V. Traag et al., "From Louvain to Leiden" (2019), Sec. 3;
networkx `algorithms/community/louvain.py` (the test oracle); igraph `src/community/louvain.c` (the speed bar).
API: modularity, louvain (one dense graph), louvain_batch (list of CSR triples, what atrl.py calls each step:
it packs them into one block-diagonal CSR), louvain_packed (clusters all B graphs of that CSR in one compiled
call, in parallel over graphs; graph b uses seed + b) and knn_packed ((B, T, k) kNN lists straight to that
CSR; timed in bench/louvain.py). Compiled code releases the GIL (nogil): train.py runs Louvain on the
probe's worker thread while the training thread runs the forward.
Run: `python -m pytest -q tests/test_clustering.py`; benchmark: `python bench/louvain.py`.
"""
import os

import numba
import numpy as np
import torch
from numba import njit, prange

# NOTE: numba's default OpenMP threading layer shares the OpenMP runtime with torch: its first parallel call
# silently raises torch's thread count, and its spinning workers slow the backward that follows (measured in
# bench/step.py: +12 ms per step, Louvain itself 12-20 ms instead of 0.4 ms on a busy 2-core machine). The
# workqueue layer has neither problem (it must not be entered by two threads at once: in train.py only the
# probe's worker calls Louvain). Set NUMBA_THREADING_LAYER to override.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
SERIAL_BELOW = 100_000  # edges: smaller batches run on one thread (starting workers costs more than it saves)

TOL = 1e-10  # smallest dQ a move (in Q units) must gain; far above float64 noise on sums of O(1e4) weights
MAX_SWEEPS = 64  # phase-1 visits per level <= MAX_SWEEPS * n; kNN graphs need a few n; the cap is a backstop
MAX_LEVELS = 64  # aggregation levels; each level shrinks the graph, real graphs need < 10

# --------------------------------------------------------------------------------------- compiled core


@njit(cache=True, nogil=True)
def _next_below(state, bound):
    """One step of Knuth's MMIX 64-bit LCG; returns (new state, a draw in [0, bound)) from the high bits."""
    state = state * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
    return state, np.int64((state >> np.uint64(33)) % np.uint64(bound))


@njit(cache=True, nogil=True)
def _local_moves(indptr, indices, weights, k, m2, gamma, order, tol_w, comm):
    """Phase 1 on one graph: move nodes to their best neighbouring community; edits comm in place.

    Nodes wait in a FIFO queue, first in `order`; a node that moves re-queues its neighbours outside its new
    community (only their gains changed much). Works in weight units: gain(c) = k_i,c - gamma*tot_c*k_i/2m
    is m * dQ, so tol_w = TOL * m. Returns the number of moves (0: already a local optimum).
    """
    n = k.shape[0]
    tot = np.zeros(n)  # (n,) tot_c, summed degrees per community
    for i in range(n):
        tot[comm[i]] += k[i]
    w_to = np.zeros(n)  # (n,) scratch: k_i,c for the communities next to the current node
    slot = np.full(n, -1)  # (n,) scratch: where community c sits in `touched`, -1 = not touched yet
    touched = np.empty(n, np.int64)  # (n,) communities next to the current node, in edge order
    queue = order.copy()  # (n,) circular FIFO of nodes to visit; each node at most once (in_queue)
    in_queue = np.ones(n, np.bool_)
    head, waiting, moves = 0, n, 0
    for visit in range(MAX_SWEEPS * n):  # cap: ties are already excluded by tol_w, this is belt and braces
        if waiting == 0:
            break
        i = queue[head]
        head = (head + 1) % n
        waiting -= 1
        in_queue[i] = False
        ci = comm[i]
        # gather k_i,c; the node's own community goes first so staying is always a candidate
        touched[0] = ci
        slot[ci] = 0
        n_touched = 1
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j == i:  # a self-loop moves with the node, so it is in every gain equally: skip it
                continue
            c = comm[j]
            if slot[c] < 0:
                slot[c] = n_touched
                touched[n_touched] = c
                n_touched += 1
            w_to[c] += weights[e]
        # take i out of its community, then pick the best home (Blondel Eq. 2; the isolated-node term
        # is the same for every c and cancels)
        scale = gamma * k[i] / m2
        tot[ci] -= k[i]
        stay = w_to[ci] - tot[ci] * scale
        best_c, best_gain = ci, stay
        for t in range(1, n_touched):
            c = touched[t]
            gain = w_to[c] - tot[c] * scale
            if gain > best_gain:  # strict: the first best in edge order wins ties
                best_c, best_gain = c, gain
        if best_gain - stay <= tol_w:  # NOTE: without this tolerance float ties can ping-pong forever
            best_c = ci
        tot[best_c] += k[i]
        for t in range(n_touched):  # reset only what we touched: O(degree), not O(n)
            w_to[touched[t]] = 0.0
            slot[touched[t]] = -1
        if best_c != ci:
            comm[i] = best_c
            moves += 1
            for e in range(indptr[i], indptr[i + 1]):  # neighbours outside best_c may now want to follow
                j = indices[e]
                if not in_queue[j] and comm[j] != best_c:
                    queue[(head + waiting) % n] = j
                    waiting += 1
                    in_queue[j] = True
    return moves


@njit(cache=True, nogil=True)
def _degrees(indptr, weights):
    """Row sums k_i of a CSR matrix (a self-loop counts once: matrix convention)."""
    k = np.zeros(indptr.shape[0] - 1)
    for i in range(k.shape[0]):
        for e in range(indptr[i], indptr[i + 1]):
            k[i] += weights[e]
    return k


@njit(cache=True, nogil=True)
def _renumber(comm):
    """Relabel in place to 0..K-1 by first appearance (node 0 gets label 0); returns K."""
    new_id = np.full(comm.shape[0], -1)
    n_comm = 0
    for i in range(comm.shape[0]):
        if new_id[comm[i]] < 0:
            new_id[comm[i]] = n_comm
            n_comm += 1
        comm[i] = new_id[comm[i]]
    return n_comm


@njit(cache=True, nogil=True)
def _aggregate(indptr, indices, weights, comm, n_comm):
    """Phase 2: the coarse CSR graph whose node c is community c; edge C-D = sum of A_ij over C x D."""
    members = np.argsort(comm, kind="mergesort")  # (n,) nodes grouped by community
    start = np.zeros(n_comm + 1, np.int64)  # (K+1,) community c's members are members[start[c]:start[c+1]]
    start[1:] = np.cumsum(np.bincount(comm, minlength=n_comm))
    new_indptr = np.zeros(n_comm + 1, np.int64)
    new_indices = np.empty(indices.shape[0], np.int64)  # coarse nnz <= fine nnz
    new_weights = np.empty(indices.shape[0])
    acc = np.zeros(n_comm)  # (K,) scratch: weight from community c to each community d
    slot = np.full(n_comm, -1)
    touched = np.empty(n_comm, np.int64)
    nnz = 0
    for c in range(n_comm):
        n_touched = 0
        for p in range(start[c], start[c + 1]):
            i = members[p]
            for e in range(indptr[i], indptr[i + 1]):
                d = comm[indices[e]]
                if slot[d] < 0:
                    slot[d] = n_touched
                    touched[n_touched] = d
                    n_touched += 1
                acc[d] += weights[e]  # d == c collects in_c: the coarse self-loop, matrix convention
        for t in range(n_touched):
            d = touched[t]
            new_indices[nnz] = d
            new_weights[nnz] = acc[d]
            nnz += 1
            acc[d] = 0.0
            slot[d] = -1
        new_indptr[c + 1] = nnz
    return new_indptr, new_indices[:nnz], new_weights[:nnz]


@njit(cache=True, nogil=True)
def _louvain_csr(indptr, indices, weights, gamma, seed):
    """Full Louvain on one CSR graph; returns (n,) int64 labels, contiguous by first appearance."""
    n = indptr.shape[0] - 1
    labels = np.arange(n)  # (n,) community of every original node, composed across levels
    k = _degrees(indptr, weights)  # (n,)
    m2 = k.sum()
    if m2 <= 0.0:  # no edges: Q undefined, every node alone
        return labels
    state = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)  # spread nearby seeds apart
    for level in range(MAX_LEVELS):
        n_nodes = k.shape[0]
        order = np.arange(n_nodes)  # Fisher-Yates shuffle: a fresh random visiting order per level
        for i in range(n_nodes - 1, 0, -1):
            state, j = _next_below(state, i + 1)
            order[i], order[j] = order[j], order[i]
        comm = np.arange(n_nodes)  # every (coarse) node starts alone
        if _local_moves(indptr, indices, weights, k, m2, gamma, order, TOL * m2 / 2, comm) == 0:
            break
        n_comm = _renumber(comm)
        for i in range(n):
            labels[i] = comm[labels[i]]
        indptr, indices, weights = _aggregate(indptr, indices, weights, comm, n_comm)
        k = _degrees(indptr, weights)  # (K,) equal to the summed fine degrees, so m2 stays valid
    _renumber(labels)
    return labels


@njit(parallel=True, cache=True, nogil=True)
def _louvain_packed(indptr, indices, weights, node_offsets, gamma, seeds):
    """Louvain on each diagonal block of a block-diagonal CSR, in parallel over blocks (graphs)."""
    labels = np.empty(indptr.shape[0] - 1, np.int64)
    for g in prange(node_offsets.shape[0] - 1):
        a, b = node_offsets[g], node_offsets[g + 1]
        e0, e1 = indptr[a], indptr[b]
        # shift to the block's own 0-based node and edge numbering; graph g always draws from seeds[g]
        labels[a:b] = _louvain_csr(indptr[a:b + 1] - e0, indices[e0:e1] - a, weights[e0:e1], gamma, seeds[g])
    return labels


_louvain_packed_serial = njit(cache=True, nogil=True)(_louvain_packed.py_func)  # same code, prange runs as range


@njit(cache=True, nogil=True)
def _find_packed_error(indptr, indices, weights, node_offsets):
    """First problem in a packed batch as (code, position), (0, 0) if none; codes are decoded in louvain_packed."""
    for g in range(node_offsets.shape[0] - 1):
        a, b = node_offsets[g], node_offsets[g + 1]
        if b < a:
            return 4, g
        for i in range(a, b):
            if indptr[i + 1] < indptr[i] or indptr[i + 1] > indices.shape[0]:  # keeps reads in bounds
                return 1, i
            for e in range(indptr[i], indptr[i + 1]):
                if not (0.0 <= weights[e] < np.inf):  # also catches NaN: every comparison with NaN is False
                    return 2, e
                if indices[e] < a or indices[e] >= b:
                    return 3, e
    # a cheap symmetry test that catches the usual slip (kNN edges kept one way only): for a symmetric A
    # the row sums (the degrees Louvain uses) equal the column sums
    col_sums = np.zeros(indptr.shape[0] - 1)
    for e in range(indices.shape[0]):
        col_sums[indices[e]] += weights[e]
    row_sums = _degrees(indptr, weights)
    for i in range(row_sums.shape[0]):
        if abs(row_sums[i] - col_sums[i]) > 1e-9 * max(1.0, row_sums[i]):
            return 5, i
    return 0, 0


@njit(cache=True, nogil=True)
def _weight_back(neighbors, weights, b, j, t):
    """Weight of node j's own choice of t in graph b, or -1.0 if j did not choose t."""
    for s in range(neighbors.shape[2]):
        if neighbors[b, j, s] == t and weights[b, j, s] > 0:
            return weights[b, j, s]
    return -1.0


@njit(parallel=True, cache=True, nogil=True)
def _knn_edges(neighbors, weights, valid, indptr, indices, edge_w, write):
    """Walk every kept kNN choice t -> j of every graph, counting (write=False: row lengths into indptr[1:])
    or placing (write=True) its CSR entries. Row t gets (j, w), w the larger weight if j also chose t; row j
    gets (t, w) only if j did not choose t, since otherwise j's own choice fills it: no duplicates."""
    n_graphs, n_nodes, k = neighbors.shape
    for b in prange(n_graphs):
        base = b * n_nodes  # global number of the graph's node 0
        # (T,) next free slot of each row; counting must not read indptr (other threads are writing it)
        fill = indptr[base:base + n_nodes].copy() if write else np.empty(0, np.int64)
        for t in range(n_nodes):
            for s in range(k):
                j, w = neighbors[b, t, s], weights[b, t, s]
                if j < 0 or j >= n_nodes or j == t or not (valid[b, t] and valid[b, j] and w > 0):
                    continue
                w_back = _weight_back(neighbors, weights, b, j, t)
                if not write:
                    indptr[base + t + 1] += 1
                    if w_back < 0:
                        indptr[base + j + 1] += 1
                    continue
                indices[fill[t]], edge_w[fill[t]] = base + j, max(w, w_back)
                fill[t] += 1
                if w_back < 0:
                    indices[fill[j]], edge_w[fill[j]] = base + t, w
                    fill[j] += 1


# --------------------------------------------------------------------------------------- public API


def _as_numpy(x, dtype):
    """A tensor, array or list as a C-contiguous numpy array of dtype (no copy when it already is one)."""
    return np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=dtype)


def _dense_checked(adj):
    """(n, n) float64 numpy copy of adj, with a ValueError that names the problem and the fix."""
    if isinstance(adj, torch.Tensor):
        adj = adj.detach().cpu().double().numpy()
    adj = np.asarray(adj, dtype=np.float64)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square (n, n) matrix, got shape {tuple(adj.shape)}")
    bad = ~np.isfinite(adj)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"adj has a NaN/inf entry {adj[i, j]} at ({i}, {j}); clean the similarities first")
    if (adj < 0).any():
        i, j = np.argwhere(adj < 0)[0]
        raise ValueError(f"adj must be non-negative, found {adj[i, j]:.4g} at ({i}, {j}); clip negatives to 0")
    asym = np.abs(adj - adj.T)
    if adj.size and asym.max() > 1e-6 * max(1.0, np.abs(adj).max()):
        i, j = np.unravel_index(np.argmax(asym), asym.shape)
        raise ValueError(f"adj must be symmetric, but A[{i},{j}]={adj[i, j]:.4g} != A[{j},{i}]={adj[j, i]:.4g};"
                         " symmetrise it, e.g. (A + A.T) / 2")
    return (adj + adj.T) / 2  # remove float-rounding asymmetry so both directions carry the same weight


def dense_to_csr(adj):
    """Dense symmetric (n, n) adjacency -> CSR (indptr (n+1,) int64, indices (nnz,) int64, weights (nnz,) f64).

    Keeps every non-zero entry, the diagonal included. Example: [[0, 2], [2, 0]] -> ([0, 1, 2], [1, 0], [2., 2.]).
    """
    adj = _dense_checked(adj)
    rows, cols = np.nonzero(adj)  # row-major, so each row's columns come out sorted
    indptr = np.zeros(adj.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=adj.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int64), adj[rows, cols]


def modularity(adj, labels, resolution=1.0):
    """Q of a labelling of a dense symmetric non-negative (n, n) graph (formula in the module docstring).

    Labels may be any integers. An edgeless graph gives 0.0. Two triangles split apart give 5/14 (see above).
    """
    adj = _dense_checked(adj)
    labels = torch.as_tensor(labels).cpu().numpy().reshape(-1)
    if labels.shape[0] != adj.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but adj has {adj.shape[0]} nodes")
    m2 = adj.sum()
    if m2 <= 0:
        return 0.0
    comm = np.unique(labels, return_inverse=True)[1].reshape(-1)  # (n,) contiguous community ids
    k = adj.sum(1)  # (n,)
    tot = np.bincount(comm, weights=k)  # (K,) tot_c
    inside = adj[comm[:, None] == comm[None, :]].sum()  # sum_c in_c
    return float(inside / m2 - resolution * np.sum((tot / m2) ** 2))


def louvain(adj, resolution=1.0, seed=0):
    """Louvain communities of a dense symmetric non-negative (n, n) graph -> LongTensor (n,), labels from 0."""
    indptr, indices, weights = dense_to_csr(adj)
    return torch.from_numpy(_louvain_csr(indptr, indices, weights, float(resolution), _seed64(seed)))


def louvain_packed(indptr, indices, weights, node_offsets, resolution=1.0, seed=0):
    """Louvain on G graphs packed as one block-diagonal CSR: the fast batch path, one compiled call.

    Graph g owns global nodes node_offsets[g] : node_offsets[g+1] (node_offsets (G+1,) int64, starts at 0)
    and its rows hold only column indices inside that range (global numbering). indptr (N+1,), indices (nnz,),
    weights (nnz,) as in dense_to_csr. E.g. B responses padded to T tokens: node b*T + t, node_offsets =
    arange(B+1)*T; padded tokens are simply isolated nodes. Returns (N,) int64 numpy labels, numbered from 0
    within each graph. Graph g uses seed + g, or seed[g] when `seed` is a sequence of per-graph seeds (give
    each graph an identity-based seed and its labels no longer depend on its slot in the batch).
    Symmetry is checked through row sums = column sums only.
    """
    indptr, indices = _as_numpy(indptr, np.int64), _as_numpy(indices, np.int64)
    weights, node_offsets = _as_numpy(weights, np.float64), _as_numpy(node_offsets, np.int64)
    n = indptr.shape[0] - 1
    if n < 0 or indptr[0] != 0 or indptr[-1] != indices.shape[0] or weights.shape != indices.shape:
        raise ValueError(f"need indptr[0] = 0 and indptr[-1] = len(indices) = len(weights), got indptr[0]="
                         f"{indptr[:1]}, indptr[-1]={indptr[-1:]}, {len(indices)} indices, {len(weights)} weights")
    if node_offsets.shape[0] < 1 or node_offsets[0] != 0 or node_offsets[-1] != n:
        raise ValueError(f"node_offsets must run from 0 to the node count {n}, got {node_offsets[:1]}"
                         f" ... {node_offsets[-1:]}")
    code, where = _find_packed_error(indptr, indices, weights, node_offsets)  # one compiled O(nnz) pass
    if code:
        problem = {1: "row %d: indptr decreases or passes len(indices)", 4: "graph %d: node_offsets decreases",
                   2: "edge %d: weights must be finite and non-negative (clip similarities to >= 0)",
                   3: "edge %d: it leaves its own graph (columns must lie in that graph's node range)",
                   5: "node %d: row and column sums differ, the graph is not symmetric (keep edge i-j in rows i"
                      " and j with one weight; symmetric kNN: i chose j or j chose i)"}[code]
        raise ValueError(problem % where)
    kernel = _louvain_packed_serial if indices.shape[0] < SERIAL_BELOW else _louvain_packed
    return kernel(indptr, indices, weights, node_offsets, float(resolution), _graph_seeds(seed, node_offsets.shape[0] - 1))


def louvain_batch(graphs, resolution=1.0, seed=0):
    """Louvain on a list of CSR triples (indptr, indices, weights) in parallel -> list of LongTensor labels.

    Graph b uses seed + b (or seed[b] for a sequence), so the labels do not depend on the thread count. Packs the graphs into one
    block-diagonal CSR and calls louvain_packed (build that layout yourself to skip the packing).
    """
    if len(graphs) == 0:
        return []
    graphs = [(_as_numpy(p, np.int64), _as_numpy(i, np.int64), _as_numpy(w, np.float64)) for p, i, w in graphs]
    for b, (p, i, w) in enumerate(graphs):
        if len(p) == 0 or p[0] != 0 or p[-1] != len(i) or len(w) != len(i):
            raise ValueError(f"graph {b}: need indptr[0] = 0 and indptr[-1] = len(indices) = len(weights)")
    sizes = np.array([len(p) - 1 for p, _, _ in graphs], np.int64)  # (G,) node counts
    node_offsets = np.concatenate([[0], np.cumsum(sizes)])  # (G+1,)
    edge_offsets = np.concatenate([[0], np.cumsum([len(i) for _, i, _ in graphs])])  # (G+1,)
    # global CSR: each graph's row pointers shift by the edges before it, its columns by the nodes before it
    indptr = np.concatenate([[0]] + [p[1:] + edge_offsets[b] for b, (p, _, _) in enumerate(graphs)])
    indices = np.concatenate([i + node_offsets[b] for b, (_, i, _) in enumerate(graphs)])
    weights = np.concatenate([w for _, _, w in graphs])
    labels = torch.from_numpy(louvain_packed(indptr, indices, weights, node_offsets, resolution, seed))
    return list(labels.split(sizes.tolist()))


def knn_packed(neighbors, weights, valid=None):
    """kNN lists of B graphs of T nodes -> the symmetric packed CSR that louvain_packed takes (compiled).

    neighbors (B, T, k) int: node t's nearest nodes in its own graph, distinct as topk gives them (-1 = none);
    weights (B, T, k): their similarities; valid (B, T) bool (None = all): padding nodes get no edges. Edge t-j exists if t chose j or j
    chose t (symmetric kNN, DESIGN §2.4) with the larger weight; self-edges and weights <= 0 are dropped.
    Returns (indptr (B*T+1,), indices, weights, node_offsets (B+1,)), node b*T + t. Example: T = 3, node 0
    chose 1 (0.5) and node 2 chose 1 (0.25) -> rows 0: [1], 1: [0, 2], 2: [1]; louvain_packed(*knn_packed(...)).
    """
    neighbors, weights = _as_numpy(neighbors, np.int64), _as_numpy(weights, np.float64)
    if neighbors.ndim != 3 or weights.shape != neighbors.shape:
        raise ValueError(f"neighbors and weights must share one (B, T, k) shape, got {neighbors.shape}"
                         f" and {weights.shape}")
    valid = np.ones(neighbors.shape[:2], np.bool_) if valid is None else _as_numpy(valid, np.bool_)
    if valid.shape != neighbors.shape[:2]:
        raise ValueError(f"valid must be (B, T) = {neighbors.shape[:2]}, got {valid.shape}")
    if not np.isfinite(weights).all():
        raise ValueError("kNN weights contain NaN/inf; clean the similarities first")
    indptr = np.zeros(neighbors.shape[0] * neighbors.shape[1] + 1, np.int64)  # (B*T+1,)
    _knn_edges(neighbors, weights, valid, indptr, np.empty(0, np.int64), np.empty(0), False)  # row lengths
    np.cumsum(indptr, out=indptr)
    indices, edge_w = np.empty(indptr[-1], np.int64), np.empty(indptr[-1])
    _knn_edges(neighbors, weights, valid, indptr, indices, edge_w, True)
    return indptr, indices, edge_w, np.arange(neighbors.shape[0] + 1, dtype=np.int64) * neighbors.shape[1]


def _seed64(seed):
    """Any Python int -> the uint64 the compiled LCG starts from."""
    return np.uint64(int(seed) % 2**64)


def _graph_seeds(seed, n_graphs):
    """(G,) uint64 seeds: seed + g for an int, else the given per-graph seeds (one per graph)."""
    if np.ndim(seed) == 0:
        return np.array([_seed64(int(seed) + g) for g in range(n_graphs)], dtype=np.uint64)
    seeds = [int(s) for s in (seed.tolist() if hasattr(seed, "tolist") else seed)]
    if len(seeds) != n_graphs:
        raise ValueError(f"{len(seeds)} seeds for {n_graphs} graphs: give one seed per graph or a single int")
    return np.array([_seed64(s) for s in seeds], dtype=np.uint64)
