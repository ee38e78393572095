"""Checks that `gradcomm` and `gradcomm.torch` import in this interpreter from the given
wheel's installed files: from this environment's site-packages (not a source tree on
sys.path), each module file byte-identical to the wheel's copy. install-torch2.sh runs it
with `python -I check_installed_wheel.py WHEEL`; exits non-zero with the reason otherwise."""

import base64
import csv
import hashlib
import io
import os
import sys
import sysconfig
import zipfile


def record_hashes(lines):
    """RECORD rows (path, 'sha256=...', size) -> {path: digest} for the package's files."""
    return {row[0]: row[1] for row in csv.reader(lines) if row and row[0].startswith("gradcomm/")
            and row[1]}


def sha256_of(path):
    digest = hashlib.sha256(open(path, "rb").read()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def main(wheel_path):
    import gradcomm
    import gradcomm.torch  # noqa: F401  (the hooks import torch: this is the check that they can)
    import torch

    site_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    package_dir = os.path.dirname(os.path.realpath(gradcomm.__file__))
    site = os.path.dirname(package_dir)
    if site not in site_dirs:
        sys.exit(f"gradcomm was imported from {package_dir}, not from this environment's "
                 f"site-packages ({', '.join(sorted(site_dirs))}): a source tree is on sys.path")

    with zipfile.ZipFile(wheel_path) as wheel:
        record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
        expected = record_hashes(io.TextIOWrapper(wheel.open(record), encoding="utf-8"))
    if not any(p.endswith(".so") for p in expected):
        sys.exit(f"{wheel_path} has no extension module")
    for relative, digest in expected.items():
        installed = os.path.join(site, relative)
        if not os.path.isfile(installed) or sha256_of(installed) != digest:
            sys.exit(f"{installed} is missing or differs from the copy in {wheel_path}")

    print(f"gradcomm {gradcomm.__version__} with torch {torch.__version__} from {site}: "
          f"{len(expected)} files match {os.path.basename(wheel_path)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -I check_installed_wheel.py WHEEL")
    main(sys.argv[1])
