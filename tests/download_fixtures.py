"""Archives with the inner structure of each dataset's real source (small images), and a real HTTP server on
127.0.0.1 that serves them with the misbehaviours the downloader must survive."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from fixtures import make_tree
from mtl_fixtures import make_dense
from PIL import Image

from sage_cli.catalog import card


def _zip(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder.parent if folder.name != "." else folder))


def _zip_contents(folder: Path, archive: Path) -> None:
    """The folder's children at the top of the zip (Dropbox zips a shared folder that way)."""
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder))


def _renamed_tree(work: Path, name: str, inner: str) -> Path:
    make_tree(work / "t", name, classes=("dog", "house"), per_class=2, size=16)
    target = work / inner
    (work / "t" / card(name).directory).rename(target)
    return target


def build_archives(out: Path) -> dict[str, list[str]]:
    """Every source's archives in ``out``; {dataset: archive names}."""
    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / (out.name + ".work")
    names: dict[str, list[str]] = {}
    # DomainBed's Google Drive copies: PACS.zip holds kfold/, office_home.zip OfficeHomeDataset_10072016/,
    # VLCS.tar.gz VLCS/
    for dataset, inner, archive in [("pacs", "kfold", "PACS.zip"), ("officehome", "OfficeHomeDataset_10072016",
                                                                     "office_home.zip")]:
        _zip(_renamed_tree(work / dataset, dataset, inner), out / archive)
        names[dataset] = [archive]
    vlcs = _renamed_tree(work / "vlcs", "vlcs", "VLCS")
    with tarfile.open(out / "VLCS.tar.gz", "w:gz") as t:
        t.add(vlcs, arcname="VLCS")
    names["vlcs"] = ["VLCS.tar.gz"]
    # DomainNet: one zip per domain, each holding <domain>/<class>/
    dn = _renamed_tree(work / "domainnet", "domainnet", "dn")
    names["domainnet"] = []
    for env in card("domainnet").envs:
        _zip(dn / env, out / f"{env}.zip")
        names["domainnet"].append(f"{env}.zip")
    # Caltech Camera Traps: flat images + one JSON of images, annotations, categories
    images = work / "terra" / "eccv_18_all_images_sm"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    categories = [{"id": i, "name": n} for i, n in enumerate(["bird", "dog", "car", "empty"])]  # car: not kept
    entries, annotations = [], []
    for location in (38, 43, 46, 100, 61):  # 61: not one of DomainBed's four
        for category in categories:
            k = len(entries)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"img{k:03d}.jpg")
            # the JSON writes locations as strings; accept numbers too
            entries.append({"id": f"i{k}", "file_name": f"img{k:03d}.jpg", "location": str(location) if k % 2 else location})
            annotations.append({"image_id": f"i{k}", "category_id": category["id"]})
    annotations.append({"image_id": "i0", "category_id": 1})  # one image with two classes goes to both folders
    with tarfile.open(out / "eccv_18_all_images_sm.tar.gz", "w:gz") as t:
        t.add(images, arcname="eccv_18_all_images_sm")
    labels = work / "terra" / "caltech_images_20210113.json"
    labels.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    with zipfile.ZipFile(out / "caltech_camera_traps.json.zip", "w") as z:
        z.write(labels, labels.name)
    names["terraincognita"] = ["eccv_18_all_images_sm.tar.gz", "caltech_camera_traps.json.zip"]
    # MTAN's Dropbox folders: train/ and val/ at the top of the zip
    for dataset in ("nyuv2", "cityscapes"):
        make_dense(work / "mtl", dataset, n_train=2, n_val=1, h=32, w=32)
        _zip_contents(work / "mtl" / dataset, out / f"{dataset}.zip")
        names[dataset] = [f"{dataset}.zip"]
    shutil.rmtree(work)
    sums = "".join(f"{hashlib.sha256((out / a).read_bytes()).hexdigest()}  {a}\n"
                   for archives in names.values() for a in archives)
    (out / "SHA256SUMS").write_text(sums)
    return names


class Mirror:
    """A real HTTP server over ``folder``. Per archive name, ``behaviour`` may hold: 'cut' (the first GET sends
    half the bytes and closes), 'norange' (Range headers ignored), 'huge' (HEAD claims 1 PB), 'html' (a web
    page instead), 'stall' (half the bytes, then silence until the server stops). ``requests`` records
    (method, path, Range header)."""

    def __init__(self, folder: Path):
        self.folder, self.behaviour, self.requests = folder, {}, []
        self.stopping = threading.Event()
        self.cut_done: set[str] = set()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                name = self.path.lstrip("/").split("?")[0]
                path = mirror.folder / name
                return name, path if path.is_file() else None

            def do_HEAD(self):
                name, path = self._file()
                mirror.requests.append(("HEAD", name, self.headers.get("Range")))
                if path is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                size = 10**15 if "huge" in mirror.behaviour.get(name, ()) else path.stat().st_size
                self.send_header("Content-Length", str(size))
                self.end_headers()

            def do_GET(self):
                name, path = self._file()
                wanted = self.headers.get("Range")
                mirror.requests.append(("GET", name, wanted))
                if path is None:
                    self.send_error(404)
                    return
                how = mirror.behaviour.get(name, ())
                if "html" in how:
                    body = b"<html><body>Sign in to continue</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = path.read_bytes()
                start = 0
                if wanted and "norange" not in how:
                    start = int(wanted.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if "stall" in how:  # a mirror that hangs mid-transfer: the client must give up on its own
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    mirror.stopping.wait(120)
                    return
                if "cut" in how and name not in mirror.cut_done:
                    mirror.cut_done.add(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
