"""Hugging Face conventions: hub ids (offline: errors and a hand-built hub cache), the
Hugging Face checkpoint layout, and the CLI's --prompt.

Nothing here reaches the network: "unreachable" hubs are HF_ENDPOINT=http://127.0.0.1:9 (a
refused connection, answered at once), and cached models are laid out by hand as
huggingface_hub lays out its cache (models--owner--name/snapshots/<commit>/... + refs/main).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("huggingface_hub")

import flipd  # noqa: E402
from flipd.models.hub import HubUnavailableError, hub_snapshot, is_hub_id  # noqa: E402

from test_diffusers_adapters import ddpm_folder, sd_folder  # noqa: E402,F401  (shared fixtures)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
pytestmark = pytest.mark.filterwarnings("ignore:.*batching rule.*")  # vmap over CPU attention falls back to a loop


@pytest.fixture(autouse=True)
def _no_hub_environment(monkeypatch, tmp_path):
    """Every test starts with an empty cache of its own and no offline flag or endpoint."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def cache_model(cache: Path, repo_id: str, source: Path) -> Path:
    """Copy the folder ``source`` into a hub cache as the main branch of ``repo_id``."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


# --------------------------------------------------------------------------- hub ids


def test_what_reads_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("google/ddpm-cifar10-32") and is_hub_id(Path("owner/name.v2"))
    for text in ("name", "a/b/c", "/abs/path", "./a", "../a", "a/..", "owner/", "owner/na me"):
        assert not is_hub_id(text), text
    (tmp_path / "owner").mkdir()
    assert not is_hub_id("owner/name")  # a mistyped path in a local folder: "No model at ..."
    with pytest.raises(FileNotFoundError, match="No model at 'owner/name'.*flipd train"):
        flipd.load("owner/name")


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_uncached_hub_id_gives_the_failure_and_the_fix(monkeypatch, how):
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for load in (flipd.load, flipd.from_diffusers, flipd.DiffusionModel.from_pretrained):
        began = time.monotonic()
        with pytest.raises(HubUnavailableError) as caught:
            load("owner/absent-model")
        assert time.monotonic() - began < 30  # a refused connection is not retried for long
        message = str(caught.value)
        assert "'owner/absent-model'" in message and "no such local folder" in message
        assert ("HF_HUB_OFFLINE is set" if how == "offline" else "http://127.0.0.1:9 could not be reached") in message
        assert "hf download owner/absent-model --local-dir DIR" in message and "HF_HOME" in message


def test_uncached_hub_id_on_the_command_line_is_one_line(monkeypatch, tmp_path):
    from test_cli import assert_user_error, flipd as run_cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli("estimate", "lollipop", "-m", "owner/absent-model", "-o", tmp_path / "x.parquet")
    assert_user_error(result, "owner/absent-model", "hf download", "flipd train")


def test_a_bad_hub_id_is_refused():
    with pytest.raises(ValueError, match="not a Hugging Face Hub id"):
        hub_snapshot("not an id")


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_cached_diffusers_pipeline_loads_by_hub_id(ddpm_folder, tmp_path, monkeypatch, how):
    cache = tmp_path / "hf-home" / "hub"
    snapshot = cache_model(cache, "owner/tiny-ddpm", ddpm_folder)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub_snapshot("owner/tiny-ddpm") == snapshot
    model = flipd.from_diffusers("owner/tiny-ddpm", dtype=torch.float64)
    local = flipd.from_diffusers(ddpm_folder, dtype=torch.float64)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(flipd.flipd(model, x, t0=100, n_probes=2), flipd.flipd(local, x, t0=100, n_probes=2))
    assert isinstance(flipd.load("owner/tiny-ddpm"), flipd.DiffusersModel)


def test_hf_hub_cache_takes_precedence_over_hf_home(ddpm_folder, tmp_path, monkeypatch):
    cache_model(tmp_path / "elsewhere", "owner/tiny-ddpm", ddpm_folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_snapshot("owner/tiny-ddpm").parent.parent.parent == tmp_path / "elsewhere"


# --------------------------------------------------------------------------- the Hugging Face checkpoint layout


def tiny_checkpoint() -> flipd.DiffusionModel:
    from flipd.models import mlp_unet

    torch.manual_seed(0)
    model = flipd.DiffusionModel(mlp_unet(3, (8, 8)), shift=torch.tensor([1.0, 2.0, 3.0]), scale=torch.full((3,), 2.0),
                                 standardize_mode="scalar", metadata={"steps_run": 7, "data": {"spec": "toy", "n_points": 9}})
    return model


def test_save_pretrained_writes_the_hugging_face_layout(tmp_path):
    model = tiny_checkpoint()
    directory = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    assert config["format"] == "flipd.diffusion_model" and config["format_version"] == 2
    card = (directory / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: flipd\n")
    for fragment in ("MLP U-net", "`VP(beta_min=0.1, beta_max=20)`", "| prediction | epsilon |", "| data shape | 3 |",
                     "| standardisation | scalar", "`toy` (9 points)", "7 steps", "from_pretrained"):
        assert fragment in card, fragment
    loaded = flipd.DiffusionModel.from_pretrained(directory)
    y, t = torch.randn(4, 3), torch.full((4,), 0.3)
    assert torch.equal(loaded(y, t), model(y, t)) and torch.equal(loaded.scale, model.scale)
    assert flipd.load(directory).metadata["steps_run"] == 7
    with pytest.raises(ValueError, match="revision= applies to Hugging Face Hub ids"):
        flipd.DiffusionModel.from_pretrained(directory, revision="main")


def test_old_layout_checkpoints_still_load(tmp_path):
    """A format-1 checkpoint: today's config under the old name flipd_model.json, version 1, no card."""
    model = tiny_checkpoint()
    directory = model.save(tmp_path / "old")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").unlink()
    (directory / "README.md").unlink()
    (directory / "flipd_model.json").write_text(json.dumps({**config, "format_version": 1}))
    from flipd.models.loading import model_kind

    assert model_kind(directory) == "flipd"
    loaded = flipd.load(directory)
    y, t = torch.randn(4, 3), torch.full((4,), 0.3)
    assert torch.equal(loaded(y, t), model(y, t))
    loaded.save(directory)  # saving over it writes the new layout and drops the old file
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_model_kind_tells_a_flipd_config_from_a_diffusers_config(tmp_path, ddpm_folder):
    from flipd.models.loading import model_kind

    directory = tiny_checkpoint().save(tmp_path / "flipd")
    assert model_kind(directory) == "flipd"
    assert model_kind(ddpm_folder / "unet") == "diffusers"  # config.json with _class_name
    assert model_kind(ddpm_folder) == "diffusers"
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="neither a flipd checkpoint config.*nor a diffusers config"):
        model_kind(neither)
    (neither / "config.json").write_text("{not json")
    assert model_kind(neither) == "flipd"  # a damaged config: the checkpoint loader names it
    with pytest.raises(flipd.models.CheckpointError, match="not valid JSON"):
        flipd.load(neither)


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_cached_flipd_checkpoint_loads_by_hub_id(tmp_path, monkeypatch, how):
    model = tiny_checkpoint()
    cache_model(tmp_path / "hf-home" / "hub", "owner/tiny-flipd", model.save_pretrained(tmp_path / "model"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv(*(("HF_HUB_OFFLINE", "1") if how == "offline" else ("HF_ENDPOINT", "http://127.0.0.1:9")))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    expected = flipd.flipd(model, x)
    torch.testing.assert_close(flipd.flipd(flipd.DiffusionModel.from_pretrained("owner/tiny-flipd"), x), expected)
    torch.testing.assert_close(flipd.flipd(flipd.load("owner/tiny-flipd"), x), expected)


def test_a_cached_hub_model_on_the_command_line(tmp_path, monkeypatch):
    from test_cli import flipd as run_cli

    model = tiny_checkpoint()
    cache_model(tmp_path / "hf-home" / "hub", "owner/tiny-flipd", model.save_pretrained(tmp_path / "model"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    points = tmp_path / "points.csv"
    points.write_text("x,y,z\n" + "\n".join(f"{i},{2 * i},{i % 3}" for i in range(6)) + "\n")
    result = run_cli("estimate", points, "-m", "owner/tiny-flipd", "-o", tmp_path / "x.csv", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "Hugging Face Hub owner/tiny-flipd" in result.output


def test_push_to_hub_checks_its_arguments_and_names_an_unreachable_hub(tmp_path, monkeypatch):
    """Uploading cannot be tested without a hub; what can be: the id check and the error when
    the hub is offline or unreachable."""
    model = tiny_checkpoint()
    with pytest.raises(ValueError, match="not a Hugging Face Hub id"):
        model.push_to_hub("no-owner")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE is set.*hf upload owner/name"):
        model.push_to_hub("owner/name")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailableError, match="Cannot push to 'owner/name' at http://127.0.0.1:9"):
        model.push_to_hub("owner/name", token="hf_not_a_real_token")


# --------------------------------------------------------------------------- --prompt


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(3)
    for i in range(3):
        pixels = torch.randint(0, 256, (8, 8, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def test_cli_prompt_conditions_a_text_conditioned_model(sd_folder, image_folder, tmp_path):
    import pandas as pd

    from flipd.datasets.sources import load_points
    from test_cli import flipd as run_cli

    images = load_points(str(image_folder)).x
    expected = {}
    for prompt in ("abc", ""):
        model = flipd.from_diffusers(sd_folder, prompt=prompt)
        expected[prompt] = flipd.flipd(model, images, trace="hutchinson", seed=0)
    assert not torch.allclose(expected["abc"], expected[""])  # the prompt matters
    for command in ("estimate", "curve"):
        table = tmp_path / f"{command}.csv"
        result = run_cli(command, image_folder, "-m", sd_folder, "--prompt", "abc", "-o", table, "--trace", "hutchinson",
                         "--threads", "1", "--quiet", *(["--steps", "3", "-n", "3"] if command == "curve" else []))
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(table)
        if command == "estimate":
            torch.testing.assert_close(torch.tensor(frame["lid"].to_numpy()), expected["abc"].double(), rtol=1e-4, atol=1e-3)
        assert json.loads(table.with_suffix(".json").read_text())["model"]["description"].endswith("prompt 'abc'")


def test_cli_prompt_is_refused_where_it_means_nothing(ddpm_folder, image_folder, tmp_path):
    from test_cli import assert_user_error, flipd as run_cli

    result = run_cli("estimate", image_folder, "-m", ddpm_folder, "--prompt", "abc", "-o", tmp_path / "x.csv")
    assert_user_error(result, "UNet2DModel", "takes no text prompt")
    checkpoint = tiny_checkpoint().save(tmp_path / "flipd")
    result = run_cli("estimate", "lollipop", "-m", checkpoint, "--prompt", "abc", "-o", tmp_path / "y.csv")
    assert_user_error(result, "flipd checkpoint, which takes no text")
    result = run_cli("estimate", "lollipop", "--method", "twonn", "--prompt", "abc", "-o", tmp_path / "z.csv")
    assert_user_error(result, "--prompt", "--model")
