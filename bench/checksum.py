"""What verifying a checkpoint costs: checkpoints.file_digests (sha256 of 64 MiB pieces on up to 8 threads, the hash in
every checkpoint's manifest.json) beside one-thread sha256 of the whole file (what `sha256sum` does), zlib's
crc32 (a cheaper checksum that still catches any flipped bit) and a plain read (the floor), on one file in the
page cache -- as a save finds the files it just wrote. Prints GB/s, the ratio to one-thread sha256, and what a
Qwen2.5-VL-3B checkpoint with its AdamW state (~40 GB: fp32 weights 15 GB + two fp32 moments of the 3.1B
trainable text weights 25 GB) would take at that speed, once per save and once per resume.

On resume the files usually come from disk, not the cache, so there the disk's read speed bounds every column.

Run (from the repository root): python bench/checksum.py            # a 1 GiB file in the temp folder
                                python bench/checksum.py --gib 4 --repeat 5
"""

import common  # first: it puts the repository root on sys.path (see its docstring)

import argparse
import hashlib
import os
import tempfile
import time
import zlib

import torch

from infra import checkpoints


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--gib", type=float, default=1.0, help="size of the file hashed, GiB")
parser.add_argument("--repeat", type=int, default=3, help="rounds; each method's fastest round is kept")
parser.add_argument("--checkpoint_gb", type=float, default=40.0, help="checkpoint size for the estimate column, GB")
args = parser.parse_args()
CHUNK = 8 << 20  # bytes per read in the one-thread methods


def read_all(path, update):
    with open(path, "rb") as f:
        while piece := f.read(CHUNK):
            update(piece)


def sha256_one_thread(path):
    h = hashlib.sha256()
    read_all(path, h.update)
    return h.hexdigest()


def crc32_one_thread(path):
    crc = [0]
    read_all(path, lambda piece: crc.__setitem__(0, zlib.crc32(piece, crc[0])))
    return crc[0]


folder = tempfile.mkdtemp()
path = os.path.join(folder, "weights.bin")
size = int(args.gib * (1 << 30))
with open(path, "wb") as f:
    for _ in range(0, size, 64 << 20):
        f.write(os.urandom(min(64 << 20, size - f.tell())))
methods = {"read only (the floor)": lambda: read_all(path, len),
           "sha256, one thread (sha256sum)": lambda: sha256_one_thread(path),
           "crc32, one thread": lambda: crc32_one_thread(path),
           f"checkpoints.file_digests ({min(8, os.cpu_count() or 1)} threads)": lambda: checkpoints.file_digests(folder, ["weights.bin"])}
read_all(path, len)  # warm the page cache
best = {name: float("inf") for name in methods}
for _ in range(args.repeat):  # interleaved rounds: the machine's load hits every method alike
    for name, fn in methods.items():
        start = time.perf_counter()
        fn()
        best[name] = min(best[name], time.perf_counter() - start)
os.remove(path)
os.rmdir(folder)

print(common.machine_line(torch.device("cpu")))
print(f"{args.gib:g} GiB file in the page cache, fastest of {args.repeat} interleaved rounds\n")
print(f"| method | GB/s | vs sha256 one thread | a {args.checkpoint_gb:g} GB checkpoint |")
print("|---|---|---|---|")
one = best["sha256, one thread (sha256sum)"]
for name, seconds in best.items():
    speed = size / seconds / 1e9
    print(f"| {name} | {speed:.2f} | {one / seconds:.2f}x | {args.checkpoint_gb / speed:.0f} s |")
