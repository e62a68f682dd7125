"""``FaceAUModel.from_pretrained`` with a Hugging Face hub id, read from huggingface_hub's own
cache.

The cache is laid out by ``tests/hub_cache.py`` as huggingface_hub lays it out
(``models--OWNER--NAME/`` with ``blobs/``, ``snapshots/<commit>/`` of relative symlinks into the
blobs and ``refs/main``), and the library's own ``scan_cache_dir`` has to see that repo and
revision. Every check runs in a fresh Python with the environment set (huggingface_hub reads
``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` when it is imported), as a
user meets it, once under the installed huggingface_hub and once under the oldest version that
setup.cfg allows: ``make test`` installs that one into ``<venv>/hub-oldest``, put first on
``PYTHONPATH`` for those runs.

The network is never used: "online" runs point ``HF_ENDPOINT`` at a server on 127.0.0.1 that
records what it is asked and answers 404, or at a closed port there."""
import configparser
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

from hub_cache import write_cache
from pyg_mefl.testing.pairs import relative_error
from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                               reference_head, save_hub_directory,
                                               whole_model_state)
from pyg_mefl import FaceAUModel
from pyg_mefl.pretrained.files import is_hub_id

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO_ID = "mexca/mefarg-open-graph-au-resnet50-stage-2"  # mexca's default hub model
UNCACHED_ID = "mexca/mefarg-not-in-the-cache"
COMMIT = hashlib.sha1(b"pyg_mefl hub cache test").hexdigest()  # 40 hex digits, like a commit
OLDEST_DIR = os.path.join(sys.prefix, "hub-oldest")  # the Makefile's $(VENV)/hub-oldest
IMAGES = (2, 3, 224, 224)
TOL = 1e-5


def _allowed_range():
    """The huggingface_hub requirement of setup.cfg's ``vision`` extra."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config["options.extras_require"]["vision"].split("\n")
    requirement = next(Requirement(line) for line in lines
                       if line.strip().startswith("huggingface_hub"))
    lower = [s.version for s in requirement.specifier if s.operator == ">="]
    assert len(lower) == 1, f"setup.cfg: {requirement} needs one lower bound (>=)"
    return requirement.specifier, Version(lower[0])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A mexca stage-2 model (the ResNet-18 trunk: the smallest the layout has, 45 MB) in a
    Hugging Face cache at ``<home>/hub``, the published state dict written and the reference
    model's outputs on ``IMAGES``."""
    base = tmp_path_factory.mktemp("hub")
    home = base / "home"
    cache = os.path.realpath(home / "hub")
    channels = 128
    head = reference_head(2, "mexca", channels, 27, 14, seed=5)
    trunk = random_backbone_state("resnet18", seed=5)
    reference = ReferenceModel("resnet18", trunk, head, channels, seed=5)
    state = whole_model_state(trunk, reference.global_linear, head, 2, "mexca")
    save_hub_directory(state, base / "saved")  # config.json + model.safetensors, as mexca's
    repo, snapshot = write_cache(cache, base / "saved", REPO_ID, COMMIT)
    with torch.no_grad():
        expected = reference.eval()(_images())
    return {"base": base, "home": str(home), "cache": cache, "repo": repo,
            "snapshot": snapshot, "state": state, "expected": expected}


def _images():
    return torch.randn(*IMAGES, generator=torch.Generator().manual_seed(0))


# --- a fresh Python per environment ------------------------------------------------------------

CHILD = r"""
import contextlib, io, json, os, sys
job = json.loads(sys.argv[1])
import huggingface_hub
from huggingface_hub import scan_cache_dir
result = {"version": huggingface_hub.__version__,
          "file": os.path.realpath(huggingface_hub.__file__)}
if "scan" in job:
    info = scan_cache_dir(job["scan"])
    result["warnings"] = [str(warning) for warning in info.warnings]
    def blobs(revision, repo):
        return {f.file_name: os.path.relpath(str(f.blob_path), str(repo.repo_path))
                for f in revision.files}
    result["repos"] = [
        {"repo_id": repo.repo_id, "repo_type": repo.repo_type,
         "revisions": [{"commit": revision.commit_hash, "refs": sorted(revision.refs),
                        "files": blobs(revision, repo)} for revision in repo.revisions]}
        for repo in info.repos]
import torch
from pyg_mefl import FaceAUModel
from pyg_mefl.pretrained.files import download_hub_model
for name in job.get("resolve", []):
    try:
        found = os.path.realpath(download_hub_model(name))
    except Exception as error:
        found = f"{type(error).__name__}: {error}"
    result.setdefault("resolved", {})[name] = found
if "load" in job:
    model = FaceAUModel.from_pretrained(job["load"])
    images = torch.randn(*job["images"], generator=torch.Generator().manual_seed(0))
    torch.save({"state": model.to_published_state_dict("mexca"), "probs": model.predict(images)},
               job["out"])
for name in job.get("fail", []):
    try:
        FaceAUModel.from_pretrained(name)
        error = None
    except Exception as raised:
        error = {"type": type(raised).__name__, "message": str(raised)}
    result.setdefault("errors", {})[name] = error
if "cli" in job:
    from pyg_mefl.cli import main
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(job["cli"])
    result["cli"] = {"status": status, "stderr": stderr.getvalue()}
print("RESULT " + json.dumps(result))
"""

_DROPPED = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_", "PYTHONPATH")
_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _environment(version, **hf):
    """This environment without Hugging Face settings, tokens or proxies, with ``hf`` set;
    huggingface_hub from ``OLDEST_DIR`` for the oldest version."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROPPED) and k.lower() not in _PROXIES}
    env.update(hf, NO_PROXY="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=os.pathsep.join(([OLDEST_DIR] if version == "oldest" else []) + [ROOT]))
    return env


def _start(job, env, cwd):
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(job)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process, what):
    out, err = process.communicate(timeout=300)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, f"{what}: exit {process.returncode}\n{err[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


class _RecordingHub(BaseHTTPRequestHandler):
    """A stand-in endpoint on 127.0.0.1: records each request, answers 404 'repo not found'."""
    requests = []

    def _answer(self):
        self.requests.append(f"{self.command} {self.path}")
        body = b'{"error": "Repository not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args):
        pass


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _oldest_missing():
    """Why the oldest allowed huggingface_hub cannot be tested, or :obj:`None`."""
    if os.path.isdir(os.path.join(OLDEST_DIR, "huggingface_hub")):
        return None
    return (f"{OLDEST_DIR}: the oldest allowed huggingface_hub is not installed there; run "
            f"`make test` (its venv recipe installs it; with the venv already built, "
            f"`rm {sys.prefix}/.installed` first)")


def test_the_oldest_allowed_version_is_installed():
    """Not a skip: without it the oldest end of setup.cfg's range goes untested."""
    if _oldest_missing():
        pytest.fail(_oldest_missing())


@pytest.fixture(scope="module", params=["installed", "oldest"])
def runs(request, hub):
    """The four runs under one huggingface_hub version, side by side:
    - ``offline``: HF_HUB_OFFLINE=1, HF_HUB_CACHE the cache (HF_HOME elsewhere): scan the cache,
      resolve and load the hub id;
    - ``offline_empty``: HF_HUB_OFFLINE=1, an empty cache: load the id, and the CLI on it;
    - ``online``: the cache found through HF_HOME, HF_ENDPOINT the recording server: resolve the
      cached id, load an uncached one;
    - ``unreachable``: an empty cache, HF_ENDPOINT a closed port: load the id."""
    version = request.param
    if version == "oldest" and _oldest_missing():
        pytest.fail(_oldest_missing())
    base = hub["base"] / version
    empty_home, empty_cache, cwd = base / "empty-home", base / "empty-cache", base / "cwd"
    for folder in (empty_home, empty_cache, cwd):
        folder.mkdir(parents=True)
    image = base / "face.png"
    Image.new("RGB", (64, 64), (128, 100, 90)).save(image)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHub)
    _RecordingHub.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    jobs = {
        "offline": ({"scan": hub["cache"], "resolve": [REPO_ID], "load": REPO_ID,
                     "images": IMAGES, "out": str(base / "loaded.pt"),
                     # predict without --checkpoint: the default model, from the cache
                     "cli": ["predict", str(image), "--out", str(base / "default.csv"),
                             "--quiet"]},
                    _environment(version, HF_HUB_OFFLINE="1", HF_HUB_CACHE=hub["cache"],
                                 HF_HOME=str(empty_home))),
        "offline_empty": ({"fail": [REPO_ID],
                           "cli": ["predict", str(image), "--out", str(base / "preds.csv"),
                                   "--quiet"]},
                          _environment(version, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(empty_cache),
                                       HF_HOME=str(empty_home))),
        "online": ({"resolve": [REPO_ID], "fail": [UNCACHED_ID]},
                   _environment(version, HF_HOME=hub["home"], HF_ENDPOINT=endpoint)),
        "unreachable": ({"fail": [REPO_ID]},
                        _environment(version, HF_HOME=str(empty_home),
                                     HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")),
    }
    try:
        started = {name: _start(job, env, cwd) for name, (job, env) in jobs.items()}
        results = {name: _result(process, f"{version} huggingface_hub, {name} run")
                   for name, process in started.items()}
    finally:
        server.shutdown()
        server.server_close()
    results["requests"] = list(_RecordingHub.requests)
    results["version_kind"] = version
    results["loaded"] = base / "loaded.pt"
    results["default_csv"] = base / "default.csv"
    return results


# --- the checks --------------------------------------------------------------------------------

def test_the_version_range_of_setup_cfg_is_the_one_tested(runs):
    allowed, lowest = _allowed_range()
    for name in ("offline", "offline_empty", "online", "unreachable"):
        version, where = runs[name]["version"], runs[name]["file"]
        assert version in allowed, f"huggingface_hub {version} is outside setup.cfg's {allowed}"
        if runs["version_kind"] == "oldest":
            assert Version(version) == lowest, (
                f"{OLDEST_DIR} holds huggingface_hub {version}, setup.cfg's lowest is {lowest}: "
                f"rerun its line of the Makefile")
            assert where.startswith(os.path.realpath(OLDEST_DIR) + os.sep), where
        else:
            assert version == metadata.version("huggingface_hub")
            assert not where.startswith(os.path.realpath(OLDEST_DIR) + os.sep), where


def test_huggingface_hub_sees_the_cache_as_its_own(runs, hub):
    offline = runs["offline"]
    assert offline["warnings"] == []
    blobs = {name: os.path.relpath(os.path.realpath(os.path.join(hub["snapshot"], name)),
                                   hub["repo"]) for name in os.listdir(hub["snapshot"])}
    assert offline["repos"] == [{
        "repo_id": REPO_ID, "repo_type": "model",
        "revisions": [{"commit": COMMIT, "refs": ["main"], "files": blobs}]}]
    assert sorted(blobs) == ["config.json", "model.safetensors"]
    assert all(path.startswith("blobs" + os.sep) for path in blobs.values())


def test_offline_the_hub_id_loads_from_the_cache(runs, hub):
    assert runs["offline"]["resolved"] == {REPO_ID: os.path.realpath(hub["snapshot"])}
    loaded = torch.load(runs["loaded"], weights_only=True)
    # the very tensors written into the cache, in the published order ...
    assert list(loaded["state"]) == list(hub["state"])
    for key, value in hub["state"].items():
        assert torch.equal(loaded["state"][key], value), key
    # ... and the outputs of loading the snapshot directory itself, and of the reference
    direct = FaceAUModel.from_pretrained(hub["snapshot"])
    assert torch.allclose(loaded["probs"], direct.predict(_images()), rtol=0, atol=1e-6)
    assert relative_error(loaded["probs"], hub["expected"]) <= TOL


def test_predict_without_a_checkpoint_runs_the_default_model_from_the_cache(runs):
    assert runs["offline"]["cli"]["status"] == 0, runs["offline"]["cli"]["stderr"]
    record = json.loads(runs["default_csv"].with_name("default.csv.json").read_text())
    assert record["checkpoint"] == REPO_ID and record["source"] == "mexca"
    rows = runs["default_csv"].read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[5] == "0"  # a flat grey picture has no face


def _assert_one_line(message, repo_id):
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert message.startswith(f"{repo_id}: not a local file or directory, and "), message
    assert "--checkpoint PATH" in message and f"download {repo_id} --local-dir PATH" in message


def test_offline_without_a_cached_copy_one_line(runs):
    error = runs["offline_empty"]["errors"][REPO_ID]
    assert error["type"] == "FileNotFoundError"
    _assert_one_line(error["message"], REPO_ID)
    assert "the Hugging Face hub is offline (HF_HUB_OFFLINE) with no cached copy" in \
        error["message"]
    command = "huggingface-cli" if runs["version_kind"] == "oldest" else "hf"
    assert f"`{command} download {REPO_ID} " in error["message"]  # the installed one's command
    cli = runs["offline_empty"]["cli"]
    assert cli["status"] == 2
    assert cli["stderr"].count("\n") == 1, cli["stderr"]
    assert cli["stderr"].startswith(f"pyg_mefl predict: error: {REPO_ID}: not a local file")
    assert "--checkpoint PATH" in cli["stderr"]


def test_online_a_cached_model_needs_no_network(runs, hub):
    assert runs["online"]["resolved"] == {REPO_ID: os.path.realpath(hub["snapshot"])}
    asked = runs["requests"]
    assert asked and all(UNCACHED_ID.split("/")[1] in request for request in asked), asked


def test_online_a_model_the_hub_has_not_one_line(runs):
    error = runs["online"]["errors"][UNCACHED_ID]
    assert error["type"] == "FileNotFoundError"
    _assert_one_line(error["message"], UNCACHED_ID)
    assert "not downloadable from the Hugging Face hub (RepositoryNotFoundError: " in \
        error["message"]


def test_unreachable_hub_without_a_cached_copy_one_line(runs):
    error = runs["unreachable"]["errors"][REPO_ID]
    assert error["type"] == "FileNotFoundError"
    _assert_one_line(error["message"], REPO_ID)
    # the innermost error, the same under requests (huggingface_hub 0.x) and httpx (1.x, 2.x)
    assert "the Hugging Face hub cannot be reached (ConnectionRefusedError: [Errno 111] " \
        "Connection refused) with no cached copy of it in " in error["message"]


# --- names that are not hub ids stay paths -----------------------------------------------------

@pytest.mark.parametrize("name", [REPO_ID, "owner/name", "org/model.v1", "a_/_b"])
def test_hub_ids(name):
    assert is_hub_id(name)


@pytest.mark.parametrize("name", [
    "model", "weights/model.pth", "owner/model.safetensors", "owner/config.json", "a/b/c",
    "./owner/name", "/owner/name", "owner/", "-owner/name", "owner/name-", "owner--x/name",
    "owner/na..me", "owner/" + "x" * 97, "owner/na me", "C:/models/x"])
def test_not_hub_ids(name):
    assert not is_hub_id(name)


@pytest.mark.parametrize("name", ["weights/missing.pth", "owner--x/name", "a/b/c"])
def test_missing_paths_that_are_no_hub_ids_say_so(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        FaceAUModel.from_pretrained(name)
    assert str(error.value) == f"checkpoint file not found: {name}"


def test_a_local_directory_wins_over_the_hub_id(hub, tmp_path, monkeypatch):
    local = tmp_path / REPO_ID
    shutil.copytree(hub["snapshot"], local)  # the files, not the symlinks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = FaceAUModel.from_pretrained(REPO_ID).to_published_state_dict("mexca")
    assert list(state) == list(hub["state"])
    assert all(torch.equal(state[key], value) for key, value in hub["state"].items())
