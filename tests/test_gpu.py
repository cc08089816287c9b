"""The CUDA paths equal the CPU path (run wherever CUDA is present; skipped otherwise, see
conftest): per-example gradients by both computers, TFA with SmoothGrad, VAR with both ways of
taking the K classes' gradients, and a full audit's verdicts and values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from auditor.attribution.gradients import FuncGradients, HookGradients, select_parameters
from auditor.attribution.saliency import make_method
from auditor.attribution.tfa import tfa
from auditor.attribution.var import class_set, var
from sample_audits.models import small_cnn

pytestmark = pytest.mark.gpu


def model_and_batch(n: int = 16):
    torch.manual_seed(0)
    model = small_cnn().eval()
    images, labels = torch.rand(n, 3, 28, 28), torch.randint(0, 10, (n,))
    return model, images, labels


def on_cuda(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).cuda()


def close(cuda: torch.Tensor, cpu: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Equal up to float32 reduction order: differences within `rtol` of the largest value."""
    return float((cuda.cpu() - cpu).abs().max()) <= rtol * float(cpu.abs().max()) + 1e-7


@pytest.mark.parametrize("computer", [FuncGradients, HookGradients])
def test_per_example_gradients_on_cuda_equal_cpu(computer):
    model, images, labels = model_and_batch()
    names = select_parameters(model)
    cpu = computer(model, names).flat(images, labels)
    cuda = computer(on_cuda(model), names).flat(images.cuda(), labels.cuda())
    assert cuda.is_cuda and close(cuda, cpu)


def test_tfa_with_smoothgrad_on_cuda_equals_cpu():
    model, images, labels = model_and_batch(4)
    names = select_parameters(model)
    tests = F.normalize(FuncGradients(model, names).flat(images.flip(0), labels.flip(0)), dim=1)
    seeds = [11, 12, 13, 14]
    cpu = tfa(model, names, images, labels, tests, samples=4, sigma=0.1, pair_seeds=seeds)
    cuda = tfa(on_cuda(model), names, images.cuda(), labels.cuda(), tests.cuda(), samples=4, sigma=0.1,
               pair_seeds=seeds)
    assert close(cuda.signed, cpu.signed, rtol=1e-2)     # second order, float32: looser


def test_tfa_rows_one_after_another_sharing_an_image_on_cuda_equal_cpu(monkeypatch):
    """The path of large models (one row at a time, pairs of one training image sharing its
    forward and first backward) on CUDA: the CPU's maps."""
    from auditor.attribution import tfa as tfa_module

    monkeypatch.setattr(tfa_module, "MIN_VMAP_ROWS", 10**9)
    model, images, labels = model_and_batch(4)
    names = select_parameters(model)
    tests = F.normalize(FuncGradients(model, names).flat(images, labels), dim=1)
    shared, same = images[:1].expand(3, -1, -1, -1), labels[:1].expand(3)
    cpu = tfa(model, names, shared, same, tests[:3], samples=4, sigma=0.1, pair_seeds=[5, 5, 5])
    cuda = tfa(on_cuda(model), names, shared.cuda(), same.cuda(), tests[:3].cuda(), samples=4, sigma=0.1,
               pair_seeds=[5, 5, 5])
    assert close(cuda.signed, cpu.signed, rtol=1e-2)


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient", "grad_cam"])
def test_var_on_cuda_equals_cpu_with_either_backward(method):
    model, images, _ = model_and_batch()
    with torch.no_grad():
        logits = model(images)
    classes = class_set(logits, logits.argmax(1), 3)
    cpu = var(make_method(method, model).attribute(images, classes), 0)
    gpu_model = on_cuda(model)
    for batched in (True, False):
        maps = make_method(method, gpu_model, batched_backward=batched).attribute(images.cuda(), classes.cuda())
        assert close(var(maps, 0), cpu), batched


def test_full_audit_on_cuda_gives_the_cpu_verdicts_and_values(tmp_path):
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    rules = [{"name": "acc", "check": "accuracy", "min_accuracy": 0.5},
             {"name": "dominance", "check": "influence_dominance", "max_top1_share": 0.6, "k": 3},
             {"name": "spot", "check": "saliency_concentration", "source": "var", "max_mass": 0.5},
             {"name": "tfa-border", "check": "region_mass", "source": "tfa", "region": "border", "max_mass": 0.5,
              "k": 2, "on": {"indices": [0, 1]}}]
    outcomes = {}
    for device in ("cpu", "cuda"):
        doc = {"audit": f"gpu-{device}", "model": {"factory": "fakes:linear"},
               "data": {"train": {"factory": "fakes:images", "kwargs": {"n": 40}},
                        "test": {"factory": "fakes:images", "kwargs": {"n": 12}}},
               "settings": {"device": device, "cache_dir": str(tmp_path / device),
                            "attribution": {"smoothgrad_samples": 2, "top_k": 3}},
               "rules": rules}
        path = tmp_path / f"audit_{device}.yaml"
        path.write_text(yaml.safe_dump(doc))
        outcomes[device] = {o.rule.name: o for o in AuditSession(load_spec(path)).run_all()}
    for name, cpu in outcomes["cpu"].items():
        cuda = outcomes["cuda"][name]
        assert cuda.status == cpu.status, name
        assert cuda.result.value == pytest.approx(cpu.result.value, rel=1e-3, abs=1e-5), name
        assert [f.index for f in cuda.result.failures] == [f.index for f in cpu.result.failures], name


def test_factored_features_on_cuda_equal_cpu_and_bfloat16_autocast_agrees():
    """The factored projection on CUDA (its matrices made on the CPU from the seed, then moved)
    equals the CPU features; `precision: bfloat16` stays within cosine 0.98 of float32."""
    from auditor.attribution.features import Featurizer
    from auditor.attribution.projection import make_projector

    model, images, labels = model_and_batch(32)
    names = select_parameters(model)
    hooks, gpu_hooks = HookGradients(model, names), HookGradients(on_cuda(model), names)
    projector = make_projector(hooks.dim, 2048, "factored", 0, shapes=hooks.shapes)
    cpu = Featurizer(hooks, projector, 32)(images, labels)
    cuda = Featurizer(gpu_hooks, projector, 32)(images.cuda(), labels.cuda())
    half = Featurizer(gpu_hooks, projector, 32, precision="bfloat16")(images.cuda(), labels.cuda())
    assert cuda.is_cuda and close(cuda, cpu)
    assert float((half.cpu() * cpu).sum(1).min()) >= 0.98


def test_label_votes_and_mislabel_suspects_on_cuda_equal_cpu():
    """Points on a circle at seeded, irregular angles (cosine = cos of the angle between them: no
    near-ties for float32 to reorder), three arcs of one label each with a few relabelled points."""
    from auditor.attribution.neighbours import nearest_neighbours
    from auditor.checks.mislabel_suspects import contradicted
    from auditor.spec.checks import MislabelParams

    g = torch.Generator().manual_seed(0)
    angles = torch.rand(60, generator=g, dtype=torch.float64).sort().values * 6.0
    features = torch.stack([angles.cos(), angles.sin()], dim=1).float()
    labels = (angles // 2.0).long()
    labels[[5, 25, 45]] = (labels[[5, 25, 45]] + 1) % 3
    cpu = nearest_neighbours(features, labels, 5, 3)
    cuda = nearest_neighbours(features.cuda(), labels, 5, 3)
    assert torch.equal(cuda.indices, cpu.indices) and torch.equal(cuda.votes, cpu.votes)
    found_cpu, z_cpu = contradicted(cpu, labels, MislabelParams())
    found_cuda, z_cuda = contradicted(cuda, labels, MislabelParams())
    assert torch.equal(found_cuda, found_cpu) and torch.equal(z_cuda, z_cpu)
    assert {5, 25, 45} <= set(found_cpu.nonzero().flatten().tolist())


def test_on_cuda_the_memory_note_counts_device_memory_for_the_stages(tmp_path):
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    doc = {"audit": "gpu-note", "model": {"factory": "fakes:linear"},
           "data": {"train": {"factory": "fakes:images"}, "test": {"factory": "fakes:images"}},
           "settings": {"device": "cuda", "cache_dir": str(tmp_path / "cache")},
           "rules": [{"name": "acc", "check": "accuracy", "min_accuracy": 0.0}]}
    path = tmp_path / "audit_note.yaml"
    path.write_text(yaml.safe_dump(doc))
    session = AuditSession(load_spec(path))
    line = session.engine.memory_note(session.spec.rules)
    assert "allocated on the device with the model loaded: expect a device peak under" in line, line
    assert "host memory: expect a peak under" in line, line
