"""clustering.py against networkx (the oracle) and against graphs whose answer we know.

Run: `python -m pytest -q tests/test_clustering.py`.
"""
import contextlib
import doctest
import signal

import networkx as nx
import numba
import numpy as np
import pytest
import torch

import clustering
from clustering import dense_to_csr, knn_packed, louvain, louvain_batch, louvain_packed, modularity
from conftest import dense_from_csr, rounding

ORACLE_SECONDS = 30  # networkx's Louvain has looped forever on float ties before; never let it hang CI


@contextlib.contextmanager
def time_limit(seconds):
    """Skip (the oracle, not our code, is at fault) if the block runs longer than `seconds`."""
    def on_alarm(signum, frame):
        raise TimeoutError
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TimeoutError:
        pytest.skip(f"networkx oracle took over {seconds} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def nx_louvain_q(graph, seed, resolution=1.0):
    """networkx's Louvain Q and cluster count on graph, under the oracle time limit."""
    with time_limit(ORACLE_SECONDS):
        parts = nx.community.louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
        return nx.community.modularity(graph, parts, weight="weight", resolution=resolution), len(parts)


def adj_of(graph):
    return torch.from_numpy(nx.to_numpy_array(graph, nodelist=sorted(graph.nodes), weight="weight"))


def ari(a, b):
    """Adjusted Rand index (Hubert & Arabie 1985) from the contingency table of two labelings."""
    a, b = np.unique(np.asarray(a), return_inverse=True)[1], np.unique(np.asarray(b), return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    pairs = lambda x: (x * (x - 1) / 2).sum()
    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array(len(a)))
    expected = rows * cols / total
    return (index - expected) / ((rows + cols) / 2 - expected)


def planted(sizes, p_in, p_out, seed, weighted=False):
    """Random partition graph with (optionally) uniform(0.5, 1.5) weights; truth in graph.graph['partition']."""
    g = nx.random_partition_graph(sizes, p_in, p_out, seed=seed)
    rng = np.random.default_rng(seed)
    for u, v in g.edges:
        g[u][v]["weight"] = float(rng.uniform(0.5, 1.5)) if weighted else 1.0
    truth = np.empty(sum(sizes), np.int64)
    for c, block in enumerate(g.graph["partition"]):
        truth[list(block)] = c
    return g, truth


def two_triangles():
    a = torch.zeros(6, 6)
    for i, j in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5), (2, 3)]:
        a[i, j] = a[j, i] = 1.0
    return a


# ----------------------------------------------------------------------------------- modularity


@pytest.mark.parametrize("resolution", [0.5, 1.0, 2.0])
def test_modularity_equals_networkx_on_arbitrary_labelings(resolution):
    rng = np.random.default_rng(0)
    for trial in range(10):
        g = nx.gnp_random_graph(40, 0.15, seed=trial)
        for u, v in g.edges:
            g[u][v]["weight"] = float(rng.uniform(0.1, 3.0))
        labels = rng.choice([-3, 0, 7, 42], size=40)  # arbitrary, non-contiguous integers
        parts = [set(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)]
        expected = nx.community.modularity(g, parts, weight="weight", resolution=resolution)
        # float64 both: ours sums n^2 entries twice (inside, 2m) and n twice (degrees, tot), networkx its edges
        # (< n^2); Q's two parts are <= 1 and <= resolution
        n = g.number_of_nodes()
        bound = rounding(3 * n * n + 2 * n + 8, 1 + resolution, torch.float64)
        assert abs(modularity(adj_of(g), torch.from_numpy(labels), resolution) - expected) <= bound


def test_modularity_counts_self_loops_once_in_degrees():
    # matrix convention: A = [[2, 1], [1, 0]] -> k = (3, 1), 2m = 4; one cluster: Q = 4/4 - (4/4)^2 = 0,
    # two clusters: Q = (2 + 0)/4 - (3/4)^2 - (1/4)^2 = 0.5 - 0.625 = -0.125
    a = torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    assert modularity(a, [0, 0]) == 0.0       # small integers and powers of 2: every operation is exact
    assert modularity(a, [0, 1]) == -0.125


def test_two_triangles_example_and_module_doctest():
    assert louvain(two_triangles()).tolist() == [0, 0, 0, 1, 1, 1]
    # 12/14 - 2 x (7/14)^2: one rounding (of 12/14, <= 2^-54), and 5/14's own (<= 2^-55)
    assert modularity(two_triangles(), [0, 0, 0, 1, 1, 1]) == pytest.approx(5 / 14, abs=rounding(1, 0.5, torch.float64))
    result = doctest.testmod(clustering, extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted >= 4


# ----------------------------------------------------------------------------------- quality vs the oracle


def quality_cases():
    yield "karate", nx.karate_club_graph()  # weighted by interaction counts
    for s in range(2):
        yield f"planted{s}", planted([30, 40, 50, 30], 0.25, 0.03, seed=s, weighted=True)[0]
        g = nx.gnp_random_graph(150, 0.05, seed=s)
        nx.set_edge_attributes(g, 1.0, "weight")
        yield f"gnp{s}", g


@pytest.mark.parametrize("name,graph", list(quality_cases()))
def test_q_at_least_networkx_minus_0_01_averaged_over_seeds(name, graph):
    adj = adj_of(graph)
    ours = np.mean([modularity(adj, louvain(adj, seed=s)) for s in range(5)])
    theirs = np.mean([nx_louvain_q(graph, seed=s)[0] for s in range(5)])
    assert ours >= theirs - 0.01, f"{name}: ours {ours:.4f} vs networkx {theirs:.4f}"


@pytest.mark.parametrize("resolution", [0.5, 2.0])
def test_resolution_behaves_like_networkx(resolution):
    graph = planted([30, 40, 50, 30], 0.25, 0.03, seed=3, weighted=True)[0]
    adj = adj_of(graph)
    ours = [louvain(adj, resolution=resolution, seed=s) for s in range(5)]
    q_ours = np.mean([modularity(adj, lab, resolution) for lab in ours])
    q_theirs, k_theirs = np.mean([nx_louvain_q(graph, s, resolution) for s in range(5)], axis=0)
    k_ours = np.mean([int(lab.max()) + 1 for lab in ours])
    assert q_ours >= q_theirs - 0.01
    assert abs(k_ours - k_theirs) <= max(1.0, 0.25 * k_theirs), (k_ours, k_theirs)


def test_higher_resolution_gives_more_clusters():
    adj = adj_of(nx.karate_club_graph())
    counts = [int(louvain(adj, resolution=r).max()) + 1 for r in (0.25, 1.0, 4.0)]
    assert counts[0] < counts[1] < counts[2], counts


def test_ari_helper_on_hand_computed_values():
    # [[2, 1, 0], [0, 1, 2]] contingency: index 2, rows 6, cols 3, 15 pairs -> (2 - 1.2) / (4.5 - 1.2) = 8/33
    # exact counts, then 4 roundings (expected, 2 differences, the quotient; relative <= 5 u) and 8/33's own
    close = rounding(3, 1, torch.float64)
    assert ari([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(8 / 33, rel=close, abs=0)
    assert ari([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0  # same split, other names: (2 - e) / (2 - e), the same bits


@pytest.mark.parametrize("weighted", [False, True])
def test_recovers_clear_planted_partitions(weighted):
    for s in range(3):
        graph, truth = planted([40, 30, 50, 40], 0.4, 0.01, seed=10 + s, weighted=weighted)
        assert ari(louvain(adj_of(graph), seed=s).numpy(), truth) >= 0.95


def test_recovers_planted_groups_of_a_knn_cosine_graph():
    # the AT-RL use: symmetric kNN-10 graph of noisy points around 4 centres in 16-d
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 64)
    x = 3 * rng.standard_normal((4, 16))[truth] + rng.standard_normal((256, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -1)
    nbr = np.argsort(-sim, axis=1)[:, :10]
    adj = np.zeros_like(sim)
    np.put_along_axis(adj, nbr, np.clip(np.take_along_axis(sim, nbr, 1), 0, None), 1)
    adj = np.maximum(adj, adj.T)
    assert ari(louvain(torch.from_numpy(adj)).numpy(), truth) >= 0.95


# ----------------------------------------------------------------------------------- determinism and batch


def test_same_seed_gives_same_labels():
    adj = adj_of(nx.gnp_random_graph(200, 0.04, seed=1))
    assert torch.equal(louvain(adj, seed=7), louvain(adj, seed=7))
    assert len({tuple(louvain(adj, seed=s).tolist()) for s in range(6)}) > 1  # the seed does reach the order


def test_batch_matches_single_graph_calls_whatever_the_thread_count():
    adjs = [adj_of(planted([20, 25, 30], 0.3, 0.05, seed=s, weighted=True)[0]) for s in range(6)]
    single = [louvain(a, seed=5 + b) for b, a in enumerate(adjs)]  # graph b uses seed + b
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            batch = louvain_batch([dense_to_csr(a) for a in adjs], seed=5)
            assert all(torch.equal(x, y) for x, y in zip(batch, single))
    finally:
        numba.set_num_threads(before)


def test_per_graph_seeds_make_labels_independent_of_the_batch_slot():
    adjs = [adj_of(nx.gnp_random_graph(60, 0.08, seed=s)) for s in range(4)]
    seeds = [101, 7, 55, 3]
    forward = louvain_batch([dense_to_csr(a) for a in adjs], seed=seeds)
    backward = louvain_batch([dense_to_csr(a) for a in adjs[::-1]], seed=seeds[::-1])
    assert all(torch.equal(x, y) for x, y in zip(forward, backward[::-1]))
    assert all(torch.equal(x, louvain(a, seed=s)) for x, a, s in zip(forward, adjs, seeds))
    with pytest.raises(ValueError, match="3 seeds for 4 graphs"):
        louvain_batch([dense_to_csr(a) for a in adjs], seed=seeds[:3])


def test_packed_layout_matches_batch_and_accepts_torch_csr():
    # two graphs packed block-diagonally: 3 + 2 nodes, padded-token style isolated node included
    graphs = [dense_to_csr(two_triangles()), dense_to_csr(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))]
    torch_graphs = [tuple(torch.from_numpy(x) for x in g) for g in graphs]
    labels = louvain_batch(torch_graphs, seed=3)
    indptr = np.concatenate([graphs[0][0], graphs[1][0][1:] + graphs[0][0][-1]])
    packed = louvain_packed(indptr, np.concatenate([graphs[0][1], graphs[1][1] + 6]),
                            np.concatenate([graphs[0][2], graphs[1][2]]), [0, 6, 8], seed=3)
    assert packed.tolist() == torch.cat(labels).tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert louvain_batch([]) == []


def test_knn_packed_docstring_example():
    # T = 3: node 0 chose 1 (0.5), node 2 chose 1 (0.25), node 1 chose nothing (-1)
    indptr, indices, weights, offsets = knn_packed([[[1], [-1], [1]]], [[[0.5], [0.0], [0.25]]])
    assert indptr.tolist() == [0, 1, 3, 4] and offsets.tolist() == [0, 3]
    assert indices.tolist() == [1, 0, 2, 1] and weights.tolist() == [0.5, 0.5, 0.25, 0.25]


def test_knn_packed_equals_the_dense_symmetric_knn_graph_and_its_clustering():
    # B padded responses of T tokens: symmetric kNN by hand (edge if either end chose it, larger weight)
    torch.manual_seed(0)
    B, T, k = 4, 40, 5
    x = torch.nn.functional.normalize(torch.randn(B, T, 8) + 2 * torch.randn(B, 1, 8).repeat(1, T, 1)
                                      * (torch.arange(T) % 3 == 0)[None, :, None], dim=-1)
    valid = torch.arange(T)[None, :] < torch.tensor([40, 33, 25, 1])[:, None]  # (B, T) padding at the end
    sim = (x @ x.transpose(1, 2)).masked_fill(~(valid[:, :, None] & valid[:, None, :]), -2.0)
    sim.diagonal(dim1=1, dim2=2).fill_(-2.0)
    weights, neighbors = sim.topk(k, dim=-1)  # (B, T, k)
    packed = knn_packed(neighbors, weights, valid)
    labels = louvain_packed(*packed, seed=11)
    indptr, indices, w, offsets = packed
    for b in range(B):
        dense = torch.zeros(T, T, dtype=torch.float64)
        for t in range(T):
            for j, wt in zip(neighbors[b, t].tolist(), weights[b, t].tolist()):
                if valid[b, t] and valid[b, j] and j != t and wt > 0:
                    dense[t, j] = dense[j, t] = max(float(dense[t, j]), wt)
        rows = slice(offsets[b], offsets[b + 1])
        e = slice(indptr[offsets[b]], indptr[offsets[b + 1]])  # response b's edges, its nodes renumbered from 0
        ours = dense_from_csr((indptr[rows.start:rows.stop + 1] - e.start, indices[e] - offsets[b], w[e]), T)
        assert torch.equal(ours, dense.to(ours.dtype))  # copies and maxima of the same floats: no arithmetic
        assert labels[rows].tolist() == louvain(dense, seed=11 + b).tolist()


def test_dense_to_csr_round_trip():
    adj = torch.tensor([[0.0, 2.0, 0.0], [2.0, 1.0, 0.5], [0.0, 0.5, 0.0]])
    indptr, indices, weights = dense_to_csr(adj)
    assert indptr.tolist() == [0, 1, 4, 5] and indices.tolist() == [1, 0, 1, 2, 1]
    assert weights.tolist() == [2.0, 2.0, 1.0, 0.5, 0.5]


# ----------------------------------------------------------------------------------- edge cases


def test_empty_and_single_node_graphs():
    assert louvain(torch.zeros(0, 0)).shape == (0,) and louvain(torch.zeros(0, 0)).dtype == torch.long
    assert louvain(torch.zeros(1, 1)).tolist() == [0]
    assert louvain(torch.ones(1, 1)).tolist() == [0]  # a lone self-loop
    empty, single = louvain_batch([dense_to_csr(torch.zeros(0, 0)), dense_to_csr(torch.ones(1, 1))])
    assert empty.tolist() == [] and single.tolist() == [0]


def test_all_zero_graph_puts_every_node_alone_with_q_zero():
    assert louvain(torch.zeros(5, 5)).tolist() == [0, 1, 2, 3, 4]
    assert modularity(torch.zeros(5, 5), [0, 0, 1, 1, 2]) == 0.0


def test_isolated_nodes_stay_alone_and_disconnected_parts_never_merge():
    a = torch.zeros(10, 10)
    a[:4, :4] = 1.0  # clique 0-3, clique 5-8; nodes 4 and 9 isolated
    a[5:9, 5:9] = 1.0
    a.fill_diagonal_(0)
    assert louvain(a).tolist() == [0, 0, 0, 0, 1, 2, 2, 2, 2, 3]


def test_weights_decide_when_the_topology_cannot():
    # a complete graph on 6 nodes: unweighted it has no structure, with heavy {0,1,2} and {3,4,5} it does
    a = torch.ones(6, 6) - torch.eye(6)
    assert louvain(a).unique().numel() == 1
    a[:3, :3] *= 10
    a[3:, 3:] *= 10
    assert louvain(a).tolist() == [0, 0, 0, 1, 1, 1]


def test_float_ties_terminate():
    # every node of a ring with 0.1-weights sees exact gain ties; it must finish, with contiguous labels
    n = 300
    a = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(n)
    a[idx, (idx + 1) % n] = a[(idx + 1) % n, idx] = 0.1
    labels = louvain(a)
    assert sorted(labels.unique().tolist()) == list(range(int(labels.max()) + 1))
    assert modularity(a, labels) > 0.8


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad,message", [
    (torch.ones(3, 4), "square"),
    (torch.ones(2, 2, 2), "square"),
    (torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "symmetric"),
    (torch.tensor([[0.0, -1.0], [-1.0, 0.0]]), "non-negative"),
    (torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]]), "NaN"),
    (torch.tensor([[0.0, float("inf")], [float("inf"), 0.0]]), "NaN/inf"),
])
def test_bad_dense_input_raises_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        louvain(bad)
    with pytest.raises(ValueError, match=message):
        modularity(bad, torch.zeros(bad.shape[0], dtype=torch.long))


def test_bad_csr_input_raises_a_clear_error():
    indptr, indices, weights = dense_to_csr(two_triangles())
    with pytest.raises(ValueError, match="non-negative"):
        louvain_batch([(indptr, indices, -weights)])
    with pytest.raises(ValueError, match="leaves its own graph"):
        louvain_packed(indptr, indices, weights, [0, 3, 6])  # the 2-3 edge crosses the two blocks
    with pytest.raises(ValueError, match="not symmetric"):  # a kNN graph with edges kept one way only
        louvain_batch([(np.array([0, 1, 2, 2]), np.array([1, 2]), np.array([1.0, 1.0]))])
    with pytest.raises(ValueError, match="graph 1: need indptr"):
        louvain_batch([(indptr, indices, weights), (indptr[1:], indices, weights)])
    with pytest.raises(ValueError, match="labels has 2 entries"):
        modularity(two_triangles(), [0, 1])
