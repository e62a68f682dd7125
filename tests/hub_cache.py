"""A Hugging Face hub cache laid out as huggingface_hub lays it out (``models--OWNER--NAME/``
with ``blobs/``, ``snapshots/<commit>/`` of relative symlinks into the blobs and ``refs/main``),
for tests that load hub ids without the network."""
import hashlib
import os
import shutil


def git_blob_id(data):
    """The blob name of a file kept in git (not LFS), such as config.json: its git object id."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_cache(cache, directory, repo_id, commit):
    """``directory``'s files as huggingface_hub caches a snapshot of ``repo_id`` at ``commit``:
    the blobs named by their git object id (small files) or sha256 (LFS files, the weights),
    relative symlinks to them in ``snapshots/<commit>/``, ``refs/main`` holding ``commit`` (no
    newline: the library writes none and reads the file as it is). The files are moved out of
    ``directory``; returns ``(repo folder, snapshot folder)``."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    for sub in ("blobs", "refs", snapshot):
        os.makedirs(os.path.join(repo, sub), exist_ok=True)
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as stream:
            data = stream.read()
        blob = (git_blob_id(data) if name.endswith(".json")
                else hashlib.sha256(data).hexdigest())
        shutil.move(os.path.join(directory, name), os.path.join(repo, "blobs", blob))
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
    with open(os.path.join(repo, "refs", "main"), "w") as stream:
        stream.write(commit)
    return repo, snapshot
