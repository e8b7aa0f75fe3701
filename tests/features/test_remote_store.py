"""A store read by URL (HTTP Range requests), staged to local disk, and served: against a real loopback server that
can cut responses short, fail, drop connections or ignore ranges."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from features.errors import ShardError, StoreError
from features.store import FeatureStore, ShardWriter, finalize_store
from features.store.format import FORMAT_VERSION
from features.store.remote import HttpFiles, remote_settings
from features.store.serve import StoreRequestHandler, make_server
from features.store.stage import stage_store

REPO = Path(__file__).resolve().parents[2]
K, D = 3, 16
IDS = [f"img/{i}.jpg" for i in range(7)]  # ids that need percent-encoding in the tar keys


def _arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.standard_normal((K, D)).astype(np.float16), rng.random((K, 4)).astype(np.float32)


def _write_store(directory: Path) -> Path:
    """Three shards (4 + 2 + 1 images) written by the real writer."""
    directory.mkdir(parents=True)
    for number, chunk in enumerate((IDS[:4], IDS[4:6], IDS[6:])):
        writer = ShardWriter(directory, number)
        for image_id in chunk:
            writer.write(image_id, *_arrays(IDS.index(image_id)), {"width": 10, "height": 20})
        writer.commit()
    finalize_store(directory, {"format": "vlm-features", "version": FORMAT_VERSION, "backend": "test",
                               "settings": {}, "weights": {}, "random_weights": False, "feature_dim": D,
                               "num_regions": K, "shard_size": 4, "num_shards": 3})
    return directory


class FaultyHandler(StoreRequestHandler):
    """The store server with faults a test arms: cut the next N range answers short, answer 500, drop the
    connection without an answer, or ignore the Range header."""

    def _serve(self, *, body: bool) -> None:
        faults = self.server.faults  # type: ignore[attr-defined]
        ranged = "Range" in self.headers
        if ranged and faults["drop"] > 0:
            faults["drop"] -= 1
            self.close_connection = True
            return  # closes the socket without a status line
        if ranged and faults["error"] > 0:
            faults["error"] -= 1
            self.send_error(500, "armed failure")
            return
        if ranged and faults["ignore_range"]:
            del self.headers["Range"]
        super()._serve(body=body)

    def send_cut(self, path: Path, start: int, length: int) -> int:
        faults = self.server.faults  # type: ignore[attr-defined]
        if "Range" in self.headers and faults["cut"] > 0:
            faults["cut"] -= 1
            return length // 2
        return length


class Served:
    """A store folder and the loopback server in front of it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server = make_server(directory, handler=FaultyHandler)
        self.server.faults = {"cut": 0, "error": 0, "drop": 0, "ignore_range": False}  # type: ignore[attr-defined]
        self.faults = self.server.faults  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(_write_store(tmp_path / "store"))
    yield s
    s.close()


def _same(a: dict, b: dict) -> bool:
    return (a["image_id"] == b["image_id"] and np.array_equal(a["feats"], b["feats"])
            and np.array_equal(a["boxes"], b["boxes"]) and a["meta"] == b["meta"])


def test_a_store_by_url_reads_what_the_folder_holds_and_opens_without_a_request_per_shard(served):
    local = FeatureStore(served.directory)
    remote = FeatureStore(served.url, retries=0)
    assert remote.remote is not None and remote.remote.requests == 3  # manifest + the two index files
    assert len(remote) == len(local) == 7 and remote.feature_dim == D and remote.num_regions == K
    assert list(remote.ids()) == list(local.ids()) == IDS
    for image_id in reversed(IDS):  # random access, across shards
        assert _same(remote[image_id], local[image_id])
    assert remote.remote.requests == 3 + 3 + 7  # + one sidecar per shard for ids(), one range per sample
    assert IDS[2] in remote and "nope" not in remote
    with pytest.raises(KeyError):
        remote["nope"]
    assert remote.shard_paths()[0] == f"{served.url}/shard-000000.tar"


def test_a_response_cut_short_or_a_server_error_or_a_dropped_connection_is_retried(served):
    store = FeatureStore(served.url, retries=3)
    store.remote.backoff = 0.0
    expected = FeatureStore(served.directory)
    served.faults.update(cut=1, error=1, drop=1)
    assert _same(store[IDS[5]], expected[IDS[5]])
    assert store.remote.retried == 3
    served.faults.update(cut=2)
    assert _same(store[IDS[0]], expected[IDS[0]])


def test_a_sample_still_cut_short_after_the_retries_is_an_error_naming_the_url_and_the_range(served):
    store = FeatureStore(served.url, retries=2)
    store.remote.backoff = 0.0
    served.faults.update(cut=3)
    with pytest.raises(ShardError) as info:
        store[IDS[1]]
    message = str(info.value)
    assert f"{served.url}/shard-000000.tar (bytes " in message
    assert "after 3 tries" in message and "cut short" in message
    served.faults.update(error=5)
    with pytest.raises(ShardError, match=r"shard-000001\.tar .*after 3 tries: the server answered 500"):
        store[IDS[4]]
    assert _same(store[IDS[4]], FeatureStore(served.directory)[IDS[4]])  # the server is back: reads work again


def test_a_server_that_ignores_range_is_refused_clearly(served):
    store = FeatureStore(served.url)
    served.faults["ignore_range"] = True
    with pytest.raises(ShardError, match="ignored the Range request.*vlm features stage"):
        store[IDS[0]]


def test_a_shard_replaced_or_damaged_on_the_server_is_an_error_never_other_numbers(served):
    store = FeatureStore(served.url, retries=0)
    shard = served.directory / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01  # same size, one bit flipped
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar is damaged: sample 'img/[45]\.jpg'.*checksum"):
        store[IDS[4]], store[IDS[5]]
    shard.write_bytes(bytes(data) + b"\0" * 512)  # replaced by a file of another size
    with pytest.raises(ShardError, match=r"has \d+ bytes on the server but the store's manifest records \d+"):
        store[IDS[4]]
    shard.unlink()
    with pytest.raises(ShardError, match=r"shard-000001\.tar: not found \(404\)"):
        store[IDS[4]]


def test_opening_names_what_is_wrong(served, monkeypatch):
    with pytest.raises(StoreError, match=r"manifest\.json: not found \(404\)"):
        FeatureStore(served.url + "/elsewhere", retries=0)
    with pytest.raises(StoreError, match="not an http:// or https:// URL"):
        HttpFiles("http://")
    with pytest.raises(StoreError, match=r"could not be read after 1 try \(retries: 0\)"):
        FeatureStore("http://127.0.0.1:9", retries=0)  # nothing listens on the discard port
    monkeypatch.setenv("VLM_HTTP_RETRIES", "many")
    with pytest.raises(StoreError, match="VLM_HTTP_RETRIES='many': expected an integer"):
        FeatureStore(served.url)
    monkeypatch.setenv("VLM_HTTP_RETRIES", "5")
    monkeypatch.setenv("VLM_HTTP_TIMEOUT", "2.5")
    assert remote_settings() == (5, 2.5) and remote_settings(0, 1.0) == (0, 1.0)


def test_forked_and_spawned_loader_workers_read_over_their_own_connections(served):
    store = FeatureStore(served.url)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.remote is not None and clone.remote._conn is None
    assert _same(clone[IDS[3]], store[IDS[3]])

    class Samples(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(IDS)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(store[IDS[i]]["feats"].astype(np.float32))

    loader = torch.utils.data.DataLoader(Samples(), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    got = [t for t in loader]
    assert all(torch.equal(g, torch.from_numpy(_arrays(i)[0].astype(np.float32))) for i, g in enumerate(got))


def test_staging_copies_and_verifies_every_shard_and_resumes(tmp_path, served):
    out = tmp_path / "staged"
    served.faults.update(cut=1)  # one chunk cut short on the way: retried
    result = stage_store(served.url, out, chunk=1024)
    assert result == {"shards": 3, "fetched": 3, "kept": 0, "bytes": result["bytes"]}
    staged, local = FeatureStore(out), FeatureStore(served.directory)
    assert all(_same(staged[i], local[i]) for i in IDS)
    assert {p.name for p in out.iterdir()} == {p.name for p in served.directory.iterdir()} - {".lock"}
    # an interrupted copy (manifest not yet written, one shard missing) resumes and keeps what is verified
    (out / "manifest.json").unlink()
    (out / "shard-000002.tar").unlink()
    result = stage_store(served.url, out)
    assert (result["fetched"], result["kept"]) == (1, 2)
    assert all(_same(FeatureStore(out)[i], local[i]) for i in IDS)


def test_staging_keeps_nothing_of_a_damaged_shard_and_refuses_a_foreign_folder(tmp_path, served):
    shard = served.directory / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    out = tmp_path / "staged"
    with pytest.raises(StoreError, match=r"shard-000000\.tar: sha256 .* the manifest records .*nothing of it was kept"):
        stage_store(served.url, out)
    assert not list(out.glob("shard-000000*")) and not (out / "manifest.json").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"holds files that are not this store's \(notes\.txt\)"):
        stage_store(served.url, other)


def test_stage_and_serve_on_the_command_line(tmp_path, served, cli):
    result = cli("features", "stage", served.url, str(tmp_path / "copy"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "3 shards" in result.stdout and "3 fetched" in result.stdout
    bad = cli("features", "stage", served.url + "/missing", str(tmp_path / "x"), "--retries", "0")
    assert bad.returncode == 2 and "not found (404)" in bad.stderr and "Traceback" not in bad.stderr

    proc = subprocess.Popen([sys.executable, "-m", "features.cli", "features", "serve", str(tmp_path / "copy"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert _same(FeatureStore(url)[IDS[6]], FeatureStore(served.directory)[IDS[6]])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pretraining_from_a_url_equals_pretraining_from_the_folder_and_resumes_exactly(tmp_path, easy_vqa_stores):
    from vlm.cli import main

    from vlm_testing import write_pretrain_config

    servers = [Served(Path(d)) for d in easy_vqa_stores]
    try:
        common = dict(train_limit=48, train={"max_steps": 8, "save_every": 4, "keep_last": 0, "num_workers": 2})
        local_cfg = write_pretrain_config(tmp_path / "local.yaml", easy_vqa_stores, **common)
        url_cfg = write_pretrain_config(tmp_path / "url.yaml", (servers[0].url, servers[1].url), **common)
        servers[0].faults.update(cut=2, drop=1)  # network trouble during the run: retried, same numbers
        for cfg, out in ((local_cfg, "local"), (url_cfg, "url")):
            assert main(["pretrain", "--config", cfg, "--out", str(tmp_path / out), "--no-progress"]) == 0
        resumed = tmp_path / "resumed"
        shutil.copytree(tmp_path / "url" / "checkpoints" / "step-00000004", resumed / "checkpoints" / "step-00000004")
        assert main(["pretrain", "--config", url_cfg, "--out", str(resumed), "--resume", "--no-progress"]) == 0
        assert servers[0].faults["cut"] == servers[0].faults["drop"] == 0  # the faults did happen
    finally:
        for s in servers:
            s.close()
    a = load_file(str(tmp_path / "local" / "model" / "model.safetensors"))
    for other in ("url", "resumed"):
        b = load_file(str(tmp_path / other / "model" / "model.safetensors"))
        assert not [k for k in a if not torch.equal(a[k], b[k])], other
