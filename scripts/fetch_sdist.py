"""Keep a package's source archive from PyPI in a folder, checked by a pinned sha256.

    python scripts/fetch_sdist.py NAME VERSION SHA256 FOLDER [--optional]

For data that ships inside a source archive (bigbench 1.0.0): `pip download`
would prepare the package's metadata, which newer pips refuse for bigbench
(it declares a direct-URL dependency), and installing it pulls in a whole
other stack. Nothing here runs at training or serving time.

Where the archive comes from, first found first:
1. the user cache (`$KERAS_ADAPTERS_CACHE`, else `~/.cache/keras-adapters`),
   where every successful download is also kept, as pip keeps its wheels;
2. PyPI's simple index.
A file whose sha256 is not the pinned one is never used. PyPI stopped
serving bigbench 1.0.0's files in December 2026: a machine without a copy
gets a warning (with `--optional`) instead of a failed set-up, and the
examples and slow tests that read the archive say it is missing.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request


class Unavailable(Exception):
    pass


def user_cache():
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras-adapters")
    return os.environ.get("KERAS_ADAPTERS_CACHE", default)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pypi_url(name, version):
    # The simple index (PEP 691's JSON form): what pip itself reads.
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (urllib.error.URLError, OSError) as error:
        raise Unavailable(f"PyPI's index could not be read ({error})") from error
    wanted = {f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}.tar.gz"}
    matches = [f for f in files if f["filename"] in wanted]
    if not matches:
        raise Unavailable(f"PyPI no longer serves a source archive of {name} {version}")
    return matches[0]["url"]


def download(url, folder, sha256):
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".download-", delete=False) as tmp:
        try:
            try:
                with urllib.request.urlopen(url, timeout=600) as response:
                    shutil.copyfileobj(response, tmp, 1 << 20)
            except (urllib.error.URLError, OSError) as error:
                raise Unavailable(f"{url} could not be downloaded ({error})") from error
            tmp.close()
            if sha256_of(tmp.name) != sha256:
                raise SystemExit(f"{url}: its sha256 is not the pinned {sha256}; nothing was kept.")
            return tmp.name
        except BaseException:
            os.unlink(tmp.name)
            raise


def place(source, target):
    """Hard-link where the file system allows it (the archive is hundreds of MB), else copy."""
    partial = target + ".partial"
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def main(name, version, sha256, folder):
    filename = f"{name}-{version}.tar.gz"
    target = os.path.join(folder, filename)
    if os.path.isfile(target):
        return target
    os.makedirs(folder, exist_ok=True)
    cached = os.path.join(user_cache(), filename)
    if os.path.isfile(cached):
        if sha256_of(cached) == sha256:
            place(cached, target)
            return target
        print(f"note: {cached} is not the pinned file (sha256 differs); not used", file=sys.stderr)
    downloaded = download(pypi_url(name, version), folder, sha256)
    os.replace(downloaded, target)
    try:
        os.makedirs(user_cache(), exist_ok=True)
        place(target, cached)
    except OSError as error:  # a read-only home only loses the reuse
        print(f"note: could not keep a copy in {user_cache()}: {error}", file=sys.stderr)
    return target


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--optional"]
    try:
        print(main(*args[:4]))
    except Unavailable as why:
        message = (
            f"{why}. Put a copy of {args[0]}-{args[1]}.tar.gz (sha256 {args[2]}) in {user_cache()} "
            "and run set-up again."
        )
        if "--optional" not in sys.argv:
            raise SystemExit(message)
        print(f"WARNING: {message} Until then the examples, benchmarks and slow tests that read it say so.",
              file=sys.stderr)
