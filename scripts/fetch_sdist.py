"""Download a package's source archive from PyPI into a folder, checked by its sha256.

    python scripts/fetch_sdist.py NAME VERSION FOLDER

For data that ships inside a source archive (bigbench 1.0.0): `pip download`
would prepare the package's metadata, which newer pips refuse for bigbench
(it declares a direct-URL dependency), and installing it pulls in a whole
other stack. Nothing here runs at training or serving time.
"""

import hashlib
import json
import os
import sys
import tempfile
import urllib.request


def main(name, version, folder):
    # The simple index (PEP 691's JSON form): what pip itself reads.
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wanted = {f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}.tar.gz"}
    matches = [f for f in files if f["filename"] in wanted]
    if not matches:
        raise SystemExit(f"PyPI has no source archive of {name} {version}.")
    sdist = {"filename": matches[0]["filename"], "url": matches[0]["url"], "digests": matches[0]["hashes"]}
    target = os.path.join(folder, sdist["filename"])
    if os.path.isfile(target):
        return target
    os.makedirs(folder, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".download-", delete=False) as tmp:
        try:
            with urllib.request.urlopen(sdist["url"], timeout=600) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    tmp.write(chunk)
            if digest.hexdigest() != sdist["digests"]["sha256"]:
                raise SystemExit(f"{sdist['url']}: its sha256 is not the one PyPI lists")
            os.replace(tmp.name, target)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)
    return target


if __name__ == "__main__":
    print(main(*sys.argv[1:4]))
