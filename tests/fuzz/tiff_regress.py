"""The fuzz-tiff-regress test: writes the seed TIFFs (make_tiff_corpus.py) into
a temporary directory and runs the fuzz entry point over them and their
mutations (fuzz-tiff-regress.c).

    /usr/bin/python3 tests/fuzz/tiff_regress.py BUILD/tests/fuzz/fuzz-tiff-regress
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

seeds = tempfile.mkdtemp(prefix="tiff-seeds-")
try:
    subprocess.run([sys.executable, os.path.join(HERE, "make_tiff_corpus.py"), seeds],
                   check=True)
    print(f"{len(os.listdir(seeds))} seed files", flush=True)
    sys.exit(subprocess.run([sys.argv[1], seeds]).returncode)
finally:
    shutil.rmtree(seeds, ignore_errors=True)
