#!/usr/bin/env python3
"""The engine's files call each other without a circle (issue 15).

Reads the engine's static library with `nm`: every member (one per source file)
with the symbols it defines and the ones it uses; a member uses another when it
calls a function (or reads a variable) the other defines. Fails, printing the
circle, when the "uses" graph between files has a cycle — e.g. net.c and a
training file calling each other, or a backend's file calling back into the file
that calls it. Prints the graph (file -> files it uses) either way.

Usage: test_engine_layering.py PATH/TO/libunet-engine.a
"""
import collections
import os
import re
import subprocess
import sys

lib = sys.argv[1]
out = subprocess.run(["nm", "-A", lib], capture_output=True, text=True, check=True).stdout
defs, uses = {}, collections.defaultdict(set)
for line in out.splitlines():
    # ARCHIVE:MEMBER:[ADDR] TYPE SYMBOL
    m = re.match(r"[^:]*:([^:]*):\s*([0-9a-f]*)\s+(\w)\s+(\S+)$", line)
    if not m:
        continue
    member = os.path.basename(m.group(1))
    # "loss.c.o" (C) and "loss.o" (the CUDA kernels of loss.cu) are different files
    member = re.sub(r"\.c\.o$", ".c", member)
    member = re.sub(r"^(cpu|cuda)_", r"\1/", member)
    member = re.sub(r"^(\w+)\.o$", r"cuda/\1.cu", member)
    kind, sym = m.group(3), m.group(4)
    if kind in "TDBR":
        defs[sym] = member
    elif kind == "U":
        uses[member].add(sym)
    else:
        uses.setdefault(member, set())

graph = {f: sorted({defs[s] for s in syms if s in defs and defs[s] != f})
         for f, syms in uses.items()}
assert len(graph) >= 15, f"only {len(graph)} members read from {lib}"
for f in sorted(graph):
    print(f"{f:28s} -> {' '.join(graph[f])}")

# a cycle, if any (depth-first search with colours)
colour, stack = {}, []


def visit(f):
    colour[f] = 1
    stack.append(f)
    for g in graph.get(f, []):
        if colour.get(g) == 1:
            return stack[stack.index(g):] + [g]
        if colour.get(g) is None:
            c = visit(g)
            if c:
                return c
    colour[f] = 2
    stack.pop()
    return None


for f in sorted(graph):
    if colour.get(f) is None:
        cycle = visit(f)
        if cycle:
            print("FAIL: the engine's files call each other in a circle: " + " -> ".join(cycle))
            sys.exit(1)
print(f"ok: {len(graph)} files, no circle")
