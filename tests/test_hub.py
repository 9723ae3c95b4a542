"""Publishing to and loading from the Hub, without the network: uploads are intercepted, and
downloads are served from a local folder laid out like the Hub cache."""

import hashlib
import shutil
from pathlib import Path
from unittest.mock import MagicMock

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

import mpdagl_triton as M
from mpdagl_triton import cli, hub
from mpdagl_triton.checkpoint import CheckpointError
from mpdagl_triton.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "digits"
    train(TrainConfig(out=str(out), epochs=1))
    return out


class FakeHub:
    """Records create_repo / create_branch / upload_folder and keeps a copy of each upload."""

    def __init__(self, monkeypatch, tmp_path, fail_with=None):
        self.calls, self.uploads, self.fail_with, self.root = [], [], fail_with, tmp_path / "uploads"

        def create_repo(api, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs, api.token))
            if self.fail_with is not None:
                raise self.fail_with

        def create_branch(api, repo_id, **kwargs):
            self.calls.append(("create_branch", repo_id, kwargs, api.token))

        def upload_folder(api, *, folder_path, repo_id, revision=None, commit_message=None,
                          create_pr=None, **kwargs):
            copy = self.root / str(len(self.uploads))
            shutil.copytree(folder_path, copy)
            files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
            self.uploads.append({"repo_id": repo_id, "revision": revision, "message": commit_message,
                                 "files": files, "folder": copy, "create_pr": create_pr})
            return MagicMock(commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
                             pr_url=f"https://huggingface.co/{repo_id}/discussions/1" if create_pr else None)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def serve_from_cache(repo_id: str, folder: Path, revision: str = "main") -> None:
    """Lay ``folder`` out in the local Hub cache as ``repo_id`` at ``revision``."""
    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)


def test_push_uploads_exactly_the_model_files_and_a_card(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch, tmp_path)
    (trained / "analysis").mkdir(exist_ok=True)
    (trained / "analysis" / "firing_rate.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    argv = ["push", str(trained), "--repo-id", "me/digits-snn", "--private", "--revision", "exp1",
            "--commit-message", "first model"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "pushed" in capsys.readouterr().out
    (trained / "analysis" / "firing_rate.png").unlink()
    assert fake.calls[0] == ("create_repo", "me/digits-snn",
                             {"private": True, "exist_ok": True, "repo_type": "model"}, "hf_test_token")
    assert fake.calls[1][:3] == ("create_branch", "me/digits-snn", {"branch": "exp1", "exist_ok": True})
    (upload,) = fake.uploads
    assert upload["revision"] == "exp1" and upload["message"] == "first model" and not upload["create_pr"]
    assert upload["files"] == ["README.md", "analysis/firing_rate.png", "config.json", "metrics.jsonl",
                               "model.safetensors"]
    assert (upload["folder"] / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    card = ModelCard((upload["folder"] / "README.md").read_text())
    assert card.data.library_name == "mpdagl-triton" and card.data.license == "mit"
    assert {"spiking-neural-network", "snn", "mpd-agl", "digits"} <= set(card.data.tags)
    last = (trained / "metrics.jsonl").read_text().splitlines()[-1]
    accuracy = round(100 * __import__("json").loads(last)["test_acc"], 2)
    assert card.data.eval_results[0].metric_value == accuracy
    assert card.data.eval_results[0].dataset_split == "test"  # digits: its test split
    assert "| `body.stem.neuron` |" in card.text and 'mpdagl_triton.load("me/digits-snn")' in card.text
    assert "@inproceedings{jiang2025mpdagl" in card.text


def test_model_card_names_a_local_dataset_without_its_path(trained, tmp_path, monkeypatch):
    """A run on a local folder: its path (meaningless on the Hub, possibly private) appears
    nowhere in the card; a Hub id is linked as the dataset, not made a tag."""
    import json
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "flowers").mkdir(parents=True)  # "data/flowers" also reads as a Hub id
    for dataset, linked, shown in (("data/flowers", None, "a local dataset (flowers)"),
                                   ("./data/flowers", None, "a local dataset (flowers)"),
                                   ("someone/flowers", ["someone/flowers"], "someone/flowers")):
        folder = tmp_path / "run"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(trained, folder)
        for name in ("config.json", "trainer_state.json"):
            state = json.loads((folder / name).read_text())
            (state["config"] if name == "trainer_state.json" else state)["dataset"] = dataset
            (folder / name).write_text(json.dumps(state))
        card = ModelCard(hub.model_card(folder, "me/flowers-snn"))
        assert card.data.datasets == linked
        assert card.data.eval_results[0].dataset_name == shown
        assert card.data.eval_results[0].dataset_type == (linked[0] if linked else "flowers")
        assert f"trained on {shown} with MPD-AGL" in card.text and f"| dataset | {shown} |" in card.text
        assert "data/flowers" not in str(card) or linked
        assert not {dataset, "flowers"} & set(card.data.tags)
        assert "logits = model(images)   # images [B, C, H, W]" in card.text
    state = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**state, "dataset": "cifar10-dvs", "timesteps": 10}))
    card = ModelCard(hub.model_card(folder, "me/dvs-snn"))
    assert "logits = model(frames)   # event frames [B, 10, 2, H, W]" in card.text
    assert "| neuron | PLIF (learnable decay), tau init 0.2, threshold 0.5" in card.text
    (folder / "config.json").write_text(json.dumps({**state, "neuron": {"learn_tau": False, "tau": 0.3}}))
    assert "| neuron | LIF (fixed decay), tau 0.3, threshold 0.5" in hub.model_card(folder, "me/lif")
    assert "cifar10-dvs" in card.data.tags and card.data.datasets is None


def test_round_trip_through_the_hub_cache(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch, tmp_path)
    hub.push(trained, "me/roundtrip")
    serve_from_cache("me/roundtrip", fake.uploads[0]["folder"])
    from_hub = M.load("me/roundtrip")
    local = M.load(trained)
    x = torch.rand(6, 1, 8, 8)
    assert torch.equal(from_hub(x), local(x))
    assert not from_hub.training
    for checkpoint in ("me/roundtrip", str(trained)):  # eval takes a Hub repo like a folder
        assert cli.main(["eval", "--checkpoint", checkpoint, "--device", "cpu"]) == 0
    from_repo, from_folder = capsys.readouterr().out.splitlines()[-2:]
    assert from_repo.split(":", 1)[1] == from_folder.split(":", 1)[1]


def test_load_refuses_what_it_cannot_honour(trained, monkeypatch):
    with pytest.raises(ValueError, match=f"revision='v1' applies to Hub repos; {trained} is a local folder"):
        M.load(trained, revision="v1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
        M.load(trained, device="cuda")
    assert next(M.load(trained, device="auto").parameters()).device.type == "cpu"


@pytest.mark.slow


def test_load_takes_a_file_of_the_folder_never_the_hub(trained, monkeypatch):
    """'runs/x/config.json' also reads as a Hub repo id: it was sent to the Hub (five retries
    offline). A file of a training folder loads the folder; another file is refused."""
    monkeypatch.setattr(hub, "_download", lambda *a: pytest.fail("went to the Hub"))
    x = torch.rand(3, 1, 8, 8)
    expected = M.load(trained)(x)
    for name in ("config.json", "model.safetensors"):
        assert torch.equal(M.load(trained / name)(x), expected)
    with pytest.raises(CheckpointError, match="metrics.jsonl is a file; pass the folder that holds config.json"):
        M.load(trained / "metrics.jsonl")


def test_push_to_hub_from_python(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch, tmp_path)
    model = M.models.create("tiny", 10, 2, in_channels=1, input_size=8, dataset="digits")
    url = model.push_to_hub("me/fresh", commit_message="hello", branch="dev")
    assert url.endswith("/commit/abc")
    (upload,) = fake.uploads
    assert upload["files"] == ["README.md", "config.json", "model.safetensors"]
    assert upload["revision"] == "dev" and upload["message"] == "hello"


def test_push_as_a_pull_request(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch, tmp_path)
    assert cli.main(["push", str(trained), "--repo-id", "me/digits-snn", "--create-pr"]) == 0
    assert "opened a pull request with" in capsys.readouterr().out
    model = M.models.create("tiny", 10, 2, in_channels=1, input_size=8, dataset="digits")
    url = model.push_to_hub("me/fresh", create_pr=True)
    assert url == "https://huggingface.co/me/fresh/discussions/1"
    assert [(u["repo_id"], u["revision"], u["create_pr"]) for u in fake.uploads] == [
        ("me/digits-snn", None, True), ("me/fresh", None, True)]
    with pytest.raises(TypeError, match="push_to_hub does not take allow_patterns, config"):
        model.push_to_hub("me/fresh", config={}, allow_patterns=["*.safetensors"])
    assert len(fake.uploads) == 2  # nothing was uploaded


def test_missing_token(trained, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert cli.main(["push", str(trained), "--repo-id", "me/x"]) == 2  # a missing token is the user's to fix
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err


def test_rejected_token(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    response = MagicMock(status_code=401, headers={})
    FakeHub(monkeypatch, tmp_path, fail_with=HfHubHTTPError("401 Client Error: Unauthorized", response=response))
    with pytest.raises(hub.HubError, match=r"rejected the token \(401\)"):
        hub.push(trained, "me/x")


@pytest.mark.slow


def test_push_without_network_is_one_line(trained, tmp_path, monkeypatch, capsys):
    """With a token but no route to the Hub: one line naming the folder, the repo and the cause."""
    from mpdagl_triton.publish import network_errors

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    transport = next(e for e in network_errors() if e.__module__.split(".")[0] in ("httpx2", "httpx", "requests"))
    FakeHub(monkeypatch, tmp_path, fail_with=transport("[Errno -3] Temporary failure in name resolution"))
    assert cli.main(["push", str(trained), "--repo-id", "me/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"pushing {trained} to me/x: the Hub cannot be reached" in err
    assert "Temporary failure in name resolution" in err


def test_a_loaded_model_pushes_the_same_card_as_its_folder(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch, tmp_path)
    hub.push(trained, "me/same")
    M.load(trained).push_to_hub("me/same")
    from_folder, from_model = (ModelCard((u["folder"] / "README.md").read_text()) for u in fake.uploads)
    assert from_model.data.eval_results and from_model.data.eval_results == from_folder.data.eval_results
    assert from_model.text == from_folder.text
    assert {"metrics.jsonl", "model.safetensors"} <= set(fake.uploads[1]["files"])


def test_missing_repo_revision_and_offline(monkeypatch):
    with pytest.raises(hub.HubError, match="not in the local cache and the Hub cannot be reached"):
        M.load("me/never-pushed")
    response = MagicMock(status_code=404, headers={})

    def missing_repo(*args, **kwargs):
        raise RepositoryNotFoundError("404", response=response)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", missing_repo)
    with pytest.raises(hub.HubError, match="no Hub repo me/nothing"):
        M.load("me/nothing")

    def missing_revision(*args, **kwargs):
        raise RevisionNotFoundError("404", response=response)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", missing_revision)
    with pytest.raises(hub.HubError, match="has no revision 'v9'"):
        M.load("me/model", revision="v9")


def test_files_of_another_library(tmp_path):
    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    (foreign / "model.safetensors").write_bytes(b"")
    serve_from_cache("someone/bert", foreign)
    with pytest.raises(CheckpointError, match="not written by mpdagl-triton"):
        M.load("someone/bert")
    with pytest.raises(CheckpointError, match="neither a folder nor a Hub repo id"):
        M.load("no/such/folder/here")
