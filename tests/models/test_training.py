"""Training: the loop learns, transfer learning copies the encoder, checkpoints resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from edge.errors import ModelError
from edge.inference.spec import Intensity, ModelSpec
from models.checkpoint import load_checkpoint
from models.data import DicomCase, lesion_voxels, prepare
from models.network import TINY, DetectionNet, NetworkConfig
from models.train import TrainConfig, detection_loss, lesion_weights, train
from models.transfer import STEM_WEIGHTS, StemLayout, set_encoder_trainable, transfer_encoder
from models.validation import ONNX_RUNTIME_FROM_SLICES, review, validate, whole_case_inference
from tests.factories import TINY_PET


def test_a_tiny_model_overfits_a_few_slices(pet_cases):
    torch.manual_seed(0)
    data = prepare(DicomCase(pet_cases[0]), TINY_PET)
    keep = np.flatnonzero(data.tumour)[:3].tolist() + np.flatnonzero(~data.tumour)[:3].tolist()
    assert len(keep) == 6, "the fixture case needs slices with and without lesions"
    data.images, data.masks = data.images[keep], data.masks[keep]
    images = torch.from_numpy(data.images.astype(np.float32))
    masks = torch.from_numpy(data.masks[:, None].astype(np.float32))
    tumour = masks.flatten(1).amax(dim=1, keepdim=True)
    net = DetectionNet(TINY)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    dice_before = validate(whole_case_inference(net, TINY_PET, "cpu", 6), [data])["val_dice"]
    losses = []
    for _ in range(150):
        net.train()
        loss = detection_loss(*net(images), masks, tumour)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.4 * np.mean(losses[:10])
    assert validate(whole_case_inference(net, TINY_PET, "cpu", 6), [data])["val_dice"] > \
        max(0.6, dice_before + 0.3)


def test_transfer_copies_exactly_the_encoder_weights():
    source, target = DetectionNet(TINY), DetectionNet(TINY)
    decoder_before = {k: v.clone() for k, v in target.state_dict().items()
                      if not k.startswith("encoder.")}
    copied = transfer_encoder(target, source)
    encoder_keys = [k for k in source.state_dict() if k.startswith("encoder.")]
    assert sorted(copied) == sorted(encoder_keys)
    for key in encoder_keys:
        assert torch.equal(target.state_dict()[key], source.state_dict()[key])
    for key, before in decoder_before.items():
        assert torch.equal(target.state_dict()[key], before)


def test_transfer_from_a_two_channel_ct_model_averages_its_stem_for_one_channel():
    ct = DetectionNet(NetworkConfig(in_channels=2, base_channels=4, depth=2, max_channels=16))
    pet = DetectionNet(NetworkConfig(in_channels=1, base_channels=4, depth=2, max_channels=16))
    transfer_encoder(pet, ct)
    stem = "encoder.stem.conv1.weight"
    assert torch.allclose(pet.state_dict()[stem], ct.state_dict()[stem].mean(dim=1, keepdim=True))


def test_transfer_into_a_model_with_a_weighting_channel_starts_that_channel_at_zero():
    plain = DetectionNet(NetworkConfig(in_channels=1, base_channels=4, depth=2, max_channels=16))
    weighted = DetectionNet(NetworkConfig(in_channels=2, base_channels=4, depth=2,
                                          max_channels=16))
    transfer_encoder(weighted, plain, StemLayout(1, descriptive=1))
    for stem in STEM_WEIGHTS:
        assert torch.equal(weighted.state_dict()[stem][:, :1], plain.state_dict()[stem])
        assert torch.all(weighted.state_dict()[stem][:, 1] == 0)


def test_small_lesions_are_weighed_as_if_they_had_the_balancing_area():
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, 0, 2:12, 2:12] = 1            # 100 pixels: at least the balancing area
    masks[0, 0, 20, 20:22] = 1             # 2 pixels
    masks[1, 0, 30, 30] = 1                # 1 pixel: capped
    weights = lesion_weights(masks, balance_pixels=50, most=25)
    assert torch.all(weights[0, 0, 2:12, 2:12] == 1)
    assert torch.all(weights[0, 0, 20, 20:22] == 25)     # 50 / 2
    assert weights[1, 0, 30, 30] == 25                   # 50 / 1, capped at 25
    background = masks == 0
    assert torch.all(weights[background] == 1)
    assert torch.all(lesion_weights(masks, balance_pixels=0) == 1)
    masks[1, 0, 30, 30] = 0
    masks[1, 0, 10:15, 10:15] = 1          # 25 pixels: 2x
    assert torch.all(lesion_weights(masks, balance_pixels=50)[1, 0, 10:15, 10:15] == 2)


def test_weighted_loss_with_unit_weights_is_the_plain_loss_and_heavier_weights_raise_it():
    torch.manual_seed(0)
    net = DetectionNet(TINY).eval()
    images, masks = torch.randn(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    masks[:, :, 10:12, 10:12] = 1
    tumour = torch.ones(2, 1)
    with torch.no_grad():
        outputs = net(images)
        plain = detection_loss(*outputs, masks, tumour)
        unit = detection_loss(*outputs, masks, tumour, torch.ones_like(masks))
        heavy = detection_loss(*outputs, masks, tumour, lesion_weights(masks, 40))
    assert torch.allclose(plain, unit)
    assert heavy > plain


def test_a_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    net = DetectionNet(TINY).train()
    set_encoder_trainable(net, False)
    stats = net.encoder.stem.norm1.running_mean.clone()
    loss = detection_loss(*net(torch.randn(2, 1, 32, 32)), torch.zeros(2, 1, 32, 32),
                          torch.zeros(2, 1))
    loss.backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert torch.equal(net.encoder.stem.norm1.running_mean, stats)
    assert any(p.grad is not None for p in net.decoder.parameters())


def tiny_config(pet_cases, out, **changes):
    settings = dict(modality="PT", data=tuple(pet_cases), out=out, network=TINY, spec=TINY_PET,
                    epochs=2, steps_per_epoch=3, batch_size=4, crop=None, workers=1,
                    val_fraction=0.34)
    return TrainConfig(**settings | changes)


def test_training_writes_checkpoints_and_resumes_where_it_stopped(pet_cases, tmp_path):
    train(tiny_config(pet_cases, tmp_path))
    first = load_checkpoint(tmp_path / "last.pt")
    assert first.epoch == 2 and len(first.history) == 2
    assert (tmp_path / "model.pt").exists() and (tmp_path / "training.png").exists()
    model = load_checkpoint(tmp_path / "model.pt")
    assert model.optimizer is None                               # slim: inference only
    assert model.spec.training_data["cases"] == 3
    assert len(model.spec.training_data["digest"]) == 64
    train(tiny_config(pet_cases, tmp_path, epochs=3, resume=True))
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.history[:2]] == \
        [h["train_loss"] for h in first.history]


@pytest.mark.parametrize("slices", [10, ONNX_RUNTIME_FROM_SLICES])
def test_false_spots_are_where_the_network_marks_a_lesion_that_is_not_there(pet_cases,
                                                                            slices):
    """A network that marks every pixel has one false spot on each slice (all but the
    lesions and their margins is one region) and finds every lesion; one that marks none
    has none and misses them all; in torch, and in ONNX Runtime, where a long pass on a
    CPU runs."""
    case = prepare(DicomCase(pet_cases[0]), TINY_PET)
    lesions = [(c, voxels) for c in (0, 1) for voxels in lesion_voxels(case.masks)]
    assert lesions
    net = DetectionNet(TINY)
    with torch.no_grad():
        net.segment.weight.zero_()
        net.segment.bias.fill_(20.0)
    run = whole_case_inference(net, TINY_PET, "cpu", slices)
    assert run.__name__ == ("onnxruntime" if slices >= ONNX_RUNTIME_FROM_SLICES else "in_torch")
    everywhere, found = review(run, [case, case], margin_px=1, lesions=lesions, batch=5)
    with torch.no_grad():
        net.segment.bias.fill_(-20.0)
    nowhere, missed = review(whole_case_inference(net, TINY_PET, "cpu", slices),
                             [case, case], margin_px=1, lesions=lesions)
    assert len(everywhere) == 2 * len(case.images) and nowhere == []
    assert len(found) == len(missed) == len(lesions)
    assert min(found) > 0.99 and max(missed) < 0.01
    assert {c for c, *_ in everywhere} == {0, 1}
    for _, s, row, col in everywhere:
        assert not case.masks[s, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].any()


def test_training_against_false_spots_and_missed_lesions_mines_them_every_epoch(
        pet_cases, tmp_path):
    train(tiny_config(pet_cases, tmp_path, hard_negative_fraction=0.3, favour_missed=3.0))
    history = json.loads((tmp_path / "history.json").read_text())
    assert [isinstance(h["false_spots"], int) for h in history] == [True, True]
    assert [isinstance(h["missed_lesions"], int) for h in history] == [True, True]
    with pytest.raises(ModelError, match="favouring missed lesions 0.5 times"):
        train(tiny_config(pet_cases, tmp_path / "no", favour_missed=0.5))
    with pytest.raises(ModelError, match="hard-negative fraction 0.6"):
        train(tiny_config(pet_cases, tmp_path / "no", hard_negative_fraction=0.6))


def test_initialising_from_another_checkpoint_copies_its_encoder(pet_cases, tmp_path):
    train(tiny_config(pet_cases, tmp_path / "source", epochs=1))
    source = load_checkpoint(tmp_path / "source" / "model.pt").build()
    train(tiny_config(pet_cases, tmp_path / "target", epochs=1, freeze_encoder_epochs=1,
                      init_encoder=tmp_path / "source" / "model.pt"))
    target = load_checkpoint(tmp_path / "target" / "model.pt").build()
    for key, value in source.state_dict().items():
        if key.startswith("encoder.") and "running" not in key and "num_batches" not in key:
            assert torch.equal(value, target.state_dict()[key]), key  # frozen: unchanged
    assert json.loads((tmp_path / "target" / "history.json").read_text())[0]["encoder_frozen"]


def test_fine_tuning_starts_from_every_weight_and_the_network_size_of_the_checkpoint(
        pet_cases, tmp_path):
    wider = NetworkConfig(base_channels=6, depth=2, max_channels=16)
    train(tiny_config(pet_cases, tmp_path / "source", epochs=1, network=wider))
    source = load_checkpoint(tmp_path / "source" / "model.pt")
    # learning rate 0: the weights stay as they start (BatchNorm statistics still move)
    train(tiny_config(pet_cases, tmp_path / "target", epochs=1, learning_rate=0.0,
                      init_weights=tmp_path / "source" / "model.pt"))
    target = load_checkpoint(tmp_path / "target" / "last.pt")
    assert target.network == wider != TINY
    learned = [k for k in source.state if "running" not in k and "num_batches" not in k]
    assert len(learned) > 50
    for key in learned:
        assert torch.equal(source.state[key], target.state[key]), key
    assert target.spec.training_data["fine_tuned_from"] == str(tmp_path / "source" / "model.pt")
    assert len(target.history) == 1                # a fresh run, not the source's epochs


def test_fine_tuning_can_move_a_model_to_a_finer_input_grid(pet_cases, tmp_path):
    """A U-Net's weights do not depend on the input's size: a model trained at 16 mm
    pixels starts the fine-tune at 8 mm with every weight it had, and its spec says so."""
    train(tiny_config(pet_cases, tmp_path / "coarse", epochs=1))
    coarse = load_checkpoint(tmp_path / "coarse" / "model.pt")
    train(tiny_config(pet_cases, tmp_path / "fine", epochs=1, learning_rate=0.0,
                      init_weights=tmp_path / "coarse" / "model.pt",
                      input_size=64, pixel_mm=8.0))
    fine = load_checkpoint(tmp_path / "fine" / "last.pt")
    assert (coarse.spec.size, coarse.spec.spacing_mm) == (32, 16.0)
    assert (fine.spec.size, fine.spec.spacing_mm) == (64, 8.0)
    assert fine.spec.intensity == coarse.spec.intensity
    for key, value in coarse.state.items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(fine.state[key], value), key
    assert prepare(DicomCase(pet_cases[0]), fine.spec).images.shape[-2:] == (64, 64)


def test_a_resumed_fine_tune_goes_on_with_its_own_network_and_source(pet_cases, tmp_path):
    wider = NetworkConfig(base_channels=6, depth=2, max_channels=16)
    train(tiny_config(pet_cases, tmp_path / "source", epochs=1, network=wider))
    source = tmp_path / "source" / "model.pt"
    for epochs in (1, 2):      # --resume before there is a last.pt: a fresh fine-tune
        train(tiny_config(pet_cases, tmp_path / "target", epochs=epochs, resume=True,
                          init_weights=source))
    target = load_checkpoint(tmp_path / "target" / "last.pt")
    assert target.network == wider and [h["epoch"] for h in target.history] == [1, 2]
    assert target.spec.training_data["fine_tuned_from"] == str(source)


def test_fine_tuning_refuses_a_model_of_another_modality(pet_cases, tmp_path):
    train(tiny_config(pet_cases, tmp_path / "source", epochs=1))
    with pytest.raises(ModelError, match="a PT model; fine-tuning for CT needs a CT one"):
        train(tiny_config(pet_cases, tmp_path / "target", modality="CT",
                          init_weights=tmp_path / "source" / "model.pt"))


def test_fine_tuning_can_add_the_mr_weighting_channel_starting_it_at_zero(tmp_path):
    """--mr-weighting on an MR model without the channel: the input grows a channel whose
    stem weights start at zero, every other weight as it was, so the fine-tune starts
    from what the model computed; the channel carries each series' weighting."""
    from models.synthetic.series import synthesize

    cases = synthesize("MR", 2, seed=4, out=tmp_path / "mr")
    tiny_mr = ModelSpec("MR", 32, 12.0, Intensity("mr_zscore"), name="tiny-mr")
    settings = dict(modality="MR", spec=tiny_mr, val_fraction=0.5)
    train(tiny_config(cases, tmp_path / "plain", epochs=1, **settings))
    train(tiny_config(cases, tmp_path / "weighted", epochs=1, learning_rate=0.0,
                      mr_weighting=True, init_weights=tmp_path / "plain" / "model.pt",
                      **settings))
    plain = load_checkpoint(tmp_path / "plain" / "model.pt")
    weighted = load_checkpoint(tmp_path / "weighted" / "last.pt")
    assert weighted.spec.intensity.weighting and weighted.network.in_channels == 2
    for key, value in plain.state.items():
        if key in STEM_WEIGHTS:
            assert torch.equal(weighted.state[key][:, :1], value)
            assert torch.all(weighted.state[key][:, 1:] == 0)
        elif "running" not in key and "num_batches" not in key:
            assert torch.equal(weighted.state[key], value), key
    for case in cases:
        truth = json.loads((case / "truth.json").read_text())["generator"]["weighting"]
        code = prepare(DicomCase(case), weighted.spec).images[:, 1]
        assert np.all(code == {"T1": -1.0, "T2": 1.0}[truth]), case


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu(pet_cases, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "edge", "train", "--data", *map(str, pet_cases), "--modality", "PT",
         "--out", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "2",
         "--batch-size", "2", "--crop", "32", "--base-channels", "4", "--depth", "2",
         "--workers", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
