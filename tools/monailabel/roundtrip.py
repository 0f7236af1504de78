"""MONAI Label round trip with this bundle: a real server, its infer endpoint and its train task.

Run with the MONAI Label environment (``tools/monailabel/setup_env.sh``)::

    .venv-monailabel/bin/python tools/monailabel/roundtrip.py --work runs/monailabel

Steps, each checked (the script exits non-zero on the first failure):

1. copy the bundle (configs, scripts, LICENSE) to ``WORK/app/model/xray_landmarks``; with ``--overlay``
   (e.g. ``configs/lower_limb.json``), write the merged configs into the copy
   (``tools/monailabel/merge_bundle.py``); train it briefly on the demo data (``--train-epochs``,
   default 2) with the copy's ``configs/train.json``;
2. copy MONAI Label's ``monaibundle`` sample app to ``WORK/app`` and build a datastore
   ``WORK/studies`` of demo images whose labels (``labels/final/<id>.png``) are landmark label
   images: a disc of value ``k + 1`` around landmark ``k``, from the demo CSV;
3. start ``monailabel start_server`` on 127.0.0.1 with ``--conf models xray_landmarks`` (local
   bundle, no model-zoo download, SAM2 off) and wait for ``/info/``;
4. ``POST /infer/xray_landmarks?image=<id>&output=all``: the returned label image must have the
   image's size, values in ``0..N``, and discs centred on the landmarks of the returned JSON;
5. ``POST /train/xray_landmarks`` with ``max_epochs`` 1, then wait for the task: it reads the
   landmarks from the label images, validates, and rewrites ``models/model.pt``;
6. infer again with the retrained model, then stop the server.

Everything is written below ``--work``; the repository is not modified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_NAME = "xray_landmarks"


def log(message: str) -> None:
    print(f"[monailabel-roundtrip {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fail(message: str) -> None:
    raise SystemExit(f"[monailabel-roundtrip] FAILED: {message}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "runs" / "monailabel"), help="working folder (recreated)")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs of the brief training before serving")
    p.add_argument("--num-studies", type=int, default=6, help="demo images in the datastore")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument("--overlay", action="append", default=[],
                   help="data overlay to serve, e.g. configs/lower_limb.json (merged into the copy's configs)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the server start and each request")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def copy_bundle(target: Path) -> None:
    target.mkdir(parents=True)
    shutil.copytree(ROOT / "configs", target / "configs")
    shutil.copytree(ROOT / "scripts", target / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "LICENSE", target / "LICENSE")
    shutil.copy(ROOT / "configs" / "metadata.json", target / "metadata.json")
    (target / "models").mkdir()


def monaibundle_app() -> Path:
    import monailabel

    candidates = [
        Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle",
        Path(monailabel.__file__).resolve().parent.parent / "sample-apps" / "monaibundle",
    ]
    for path in candidates:
        if (path / "main.py").is_file():
            return path
    fail(f"MONAI Label's monaibundle sample app not found (looked in {', '.join(map(str, candidates))})")


def build_datastore(bundle: Path, studies: Path, count: int, demo_kind: str) -> list[dict]:
    """Copy ``count`` demo images of ``demo_kind`` and write their landmark label images; returns the records."""
    sys.path.insert(0, str(bundle))
    from scripts.data import LandmarkDataset
    from scripts.data.image_reader import read_image_size
    from scripts.writers import landmark_label_image, write_label_image

    dataset = LandmarkDataset(bundle / "demo_data" / demo_kind)
    items = dataset.datalist("train")[:count]
    (studies / "labels" / "final").mkdir(parents=True)
    records = []
    for item in items:
        source = Path(item["image"])
        image = studies / source.name
        shutil.copy(source, image)
        hw = read_image_size(image)
        label = landmark_label_image(item["landmarks"], hw, radius=3.0)
        write_label_image(studies / "labels" / "final" / (source.stem + ".png"), label)
        records.append({"id": source.stem, "image": image, "hw": hw, "landmarks": np.asarray(item["landmarks"])})
    log(f"datastore {studies}: {len(records)} images with landmark label images in labels/final/")
    return records


def start_server(app: Path, studies: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1",
           "--port", str(port), "--conf", "models", BUNDLE_NAME, "--conf", "zoo_source", "github",
           "--conf", "sam2", "false", "--conf", "preload", "false"]
    log("$ " + " ".join(cmd) + f"  (log: {log_path})")
    # the server starts its train tasks with `python` from PATH: make it this environment's
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_server(base: str, server: subprocess.Popen, timeout: float, log_path: Path) -> dict:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            fail(f"server exited with code {server.returncode}; last lines of {log_path}:\n" + tail(log_path))
        try:
            r = requests.get(f"{base}/info/", timeout=10)
            if r.status_code == 200:
                return r.json()
        except requests.ConnectionError:
            pass
        time.sleep(2)
    fail(f"server did not answer /info/ within {timeout:.0f} s; last lines of {log_path}:\n" + tail(log_path))


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (it starts workers of its own)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def infer(base: str, record: dict, num_landmarks: int, label_radius: float, timeout: float) -> dict:
    """Run the infer endpoint on one datastore image and check the label image against the JSON."""
    import io

    import requests
    from PIL import Image
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    start = time.perf_counter()
    r = requests.post(f"{base}/infer/{BUNDLE_NAME}", params={"image": record["id"], "output": "all"}, timeout=timeout)
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        fail(f"infer {record['id']}: HTTP {r.status_code}: {r.text[:2000]}")
    parts = {}
    for part in MultipartDecoder.from_response(r).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        name = disposition.split('name="', 1)[1].split('"', 1)[0] if 'name="' in disposition else ""
        parts[name] = part.content
    if "params" not in parts or "image" not in parts:
        fail(f"infer {record['id']}: expected a multipart answer with 'params' and 'image', got {sorted(parts)}")
    params = json.loads(parts["params"])
    label = np.asarray(Image.open(io.BytesIO(parts["image"])))
    landmarks = params.get("landmarks")
    if not isinstance(landmarks, list) or len(landmarks) != num_landmarks:
        fail(f"infer {record['id']}: JSON has no list of {num_landmarks} landmarks: {json.dumps(params)[:1000]}")
    if label.shape != tuple(record["hw"]):
        fail(f"infer {record['id']}: label image is {label.shape}, the image is {tuple(record['hw'])} (H, W)")
    values = set(np.unique(label).tolist())
    if not values <= set(range(num_landmarks + 1)):
        fail(f"infer {record['id']}: label values {sorted(values)} outside 0..{num_landmarks}")
    # the label is the disc image of the JSON points (the config's label_radius); JSON rounds to 1e-4 px
    from scripts.writers import landmark_label_image

    points = np.array([[np.nan if lm["x"] is None else lm["x"], np.nan if lm["y"] is None else lm["y"]]
                       for lm in landmarks])
    expected = landmark_label_image(points, label.shape, radius=label_radius)
    differing = int((expected != label).sum())
    if differing > max(2, label.size // 1000):
        fail(f"infer {record['id']}: the label image is not the discs of the JSON landmarks ({differing} pixels differ)")
    error = np.nanmean(np.hypot(*(points - record["landmarks"]).T))
    log(f"infer {record['id']}: {seconds:.1f} s; label {label.shape[1]}x{label.shape[0]} uint{label.dtype.itemsize * 8}, "
        f"values 0..{max(values)}, equal to discs of radius {label_radius:g} px at the {len(landmarks)} JSON points "
        f"({differing} pixels differ); mean error against the demo annotation {error:.1f} px")
    return {"seconds": seconds, "mean_error_px": float(error), "label_values": len(values), "json": params}


def train(base: str, bundle: Path, timeout: float) -> dict:
    """Start the train task as a client does (a background process of the server) and wait for it."""
    import requests

    model = bundle / "models" / "model.pt"
    before = model.stat().st_mtime_ns
    request = {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.34, "pretrained": True}
    log(f"train: POST /train/{BUNDLE_NAME} {json.dumps(request)}")
    start = time.perf_counter()
    r = requests.post(f"{base}/train/{BUNDLE_NAME}", json=request, timeout=60)
    if r.status_code != 200:
        fail(f"train: HTTP {r.status_code}: {r.text[:2000]}")
    deadline = time.monotonic() + timeout
    # poll the task's own status: check_if_running can answer "not running" before the task's process is up
    while True:
        task = requests.get(f"{base}/train/", timeout=30).json()
        if isinstance(task, dict) and task.get("status") not in (None, "", "SUBMITTED", "RUNNING"):
            break
        if time.monotonic() > deadline:
            fail(f"train: still running after {timeout:.0f} s")
        time.sleep(2)
    seconds = time.perf_counter() - start
    details = task.get("details", []) if isinstance(task, dict) else []
    if not isinstance(task, dict) or task.get("status") != "DONE":
        state = task.get("status") if isinstance(task, dict) else task
        fail(f"train: task status {state!r}, expected 'DONE'; last log lines:\n" + "\n".join(details[-40:]))
    if model.stat().st_mtime_ns == before:
        fail(f"train: {model} was not rewritten by the train task; last log lines:\n" + "\n".join(details[-40:]))
    best = [line.strip() for line in details if "Best validation" in line]
    log(f"train: DONE in {seconds:.1f} s; {model} rewritten; " + (best[-1] if best else "no best-metric line in the log"))
    return {"seconds": seconds, "best": best[-1] if best else None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    app, studies = work / "app", work / "studies"
    bundle = app / "model" / BUNDLE_NAME
    shutil.copytree(monaibundle_app(), app, ignore=shutil.ignore_patterns("__pycache__"))
    copy_bundle(bundle)
    if args.overlay:
        command = [sys.executable, str(ROOT / "tools" / "monailabel" / "merge_bundle.py"), "--bundle", str(bundle)]
        run(command + [arg for overlay in args.overlay for arg in ("--overlay", str(ROOT / overlay))], cwd=ROOT)

    start = time.perf_counter()
    run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
         "--max_epochs", str(args.train_epochs), "--val_interval", "1"], cwd=bundle)
    log(f"brief training: {time.perf_counter() - start:.0f} s, {bundle / 'models' / 'model.pt'}")

    demo_kind = json.loads((bundle / "configs" / "train.json").read_text())["demo_kind"]
    records = build_datastore(bundle, studies, args.num_studies, demo_kind)
    label_radius = float(json.loads((bundle / "configs" / "inference.json").read_text())["label_radius"])
    num_landmarks = len(records[0]["landmarks"])

    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = work / "server.log"
    start = time.perf_counter()
    server = start_server(app, studies, port, server_log)
    result: dict = {}
    try:
        info = wait_for_server(base, server, args.timeout, server_log)
        log(f"server up in {time.perf_counter() - start:.0f} s: {info.get('name')}; models {sorted(info.get('models', {}))}; "
            f"trainers {sorted(info.get('trainers', {}))}")
        if BUNDLE_NAME not in info.get("models", {}) or BUNDLE_NAME not in info.get("trainers", {}):
            fail(f"server does not list {BUNDLE_NAME} as model and trainer: {json.dumps(info)[:2000]}")
        labels = info["models"][BUNDLE_NAME].get("labels", {})
        if len(labels) != num_landmarks or labels.get("landmark_00") != 1:
            fail(f"model labels should map landmark_00..landmark_{num_landmarks - 1:02d} to 1..{num_landmarks}: {labels}")
        log(f"model labels: {len(labels)} landmarks, landmark_00 -> {labels['landmark_00']} (0 = background)")
        result["infer_before"] = infer(base, records[-1], num_landmarks, label_radius, args.timeout)
        result["train"] = train(base, bundle, args.timeout)
        result["infer_after"] = infer(base, records[-1], num_landmarks, label_radius, args.timeout)
    finally:
        stop_server(server)
    for key in ("infer_before", "infer_after"):
        result[key].pop("json", None)
    (work / "result.json").write_text(json.dumps(result, indent=2))
    log(f"PASSED; server log {server_log}, summary {work / 'result.json'}")
    return result


if __name__ == "__main__":
    main()
