"""Least-squares reconstruction of pruned layers whose outputs were kept."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from torch import nn

from edgetl.compress.prune import PruneSettings, prune_model, reconstruct_layers, reconstructable_layers


class Block(nn.Module):
    """expand (prunable) -> 3x3 with bias (prunable) -> project (kept whole) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(3, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.project = nn.Conv2d(32, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.project(self.mid(self.expand(x))).mean((2, 3)))


def batches(count: int = 6, size: int = 16):
    return lambda: (torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(count))


def _output_error(student: nn.Module, teacher: nn.Module, name: str) -> float:
    """Relative squared error of the named layer's output, student vs teacher, on fresh inputs."""
    outputs = {}
    for tag, model in (("s", student), ("t", teacher)):
        hook = dict(model.named_modules())[name].register_forward_hook(lambda m, a, o, tag=tag: outputs.__setitem__(tag, o))
        with torch.no_grad():
            model.eval()(torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(99)))
        hook.remove()
    return float(((outputs["s"] - outputs["t"]) ** 2).sum() / (outputs["t"] ** 2).sum())


@pytest.fixture
def pair():
    torch.manual_seed(0)
    teacher = Block().eval()
    student = copy.deepcopy(teacher)
    prune_model(student, torch.randn(1, 3, 16, 16), PruneSettings(ratio=0.5, round_to=None, ignored=("project",)), ["fc"])
    return teacher, student


def test_only_layers_with_pruned_inputs_and_kept_outputs_qualify(pair):
    teacher, student = pair
    assert student.project.in_channels == 16 and student.project.out_channels == 16  # inputs pruned, outputs kept
    assert student.mid[0].out_channels == 16  # outputs pruned: not reconstructable
    assert reconstructable_layers(student, teacher) == ["project"]
    assert reconstructable_layers(teacher, copy.deepcopy(teacher)) == []


def test_reconstruction_cuts_the_output_error_and_matches_lstsq(pair):
    teacher, student = pair
    before = _output_error(student, teacher, "project")
    report = reconstruct_layers(student, teacher, batches())
    after = _output_error(student, teacher, "project")
    assert report["layers"] == 1 and set(report["errors"]) == {"project"}
    assert report["errors"]["project"]["after"] < report["errors"]["project"]["before"]
    assert after < 0.5 * before, (before, after)
    # The same solution from an independent least-squares fit on the unfolded patches (tiny ridge aside).
    xs, ys = [], []
    hooks = [student.project.register_forward_pre_hook(lambda m, a: xs.append(a[0])),
             teacher.project.register_forward_hook(lambda m, a, o: ys.append(o))]
    with torch.no_grad():
        for batch in batches()():
            student(batch), teacher(batch)
    for hook in hooks:
        hook.remove()
    patches = torch.cat([nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 16 * 9)
                         for x in xs]).double()
    patches = torch.cat([patches, torch.ones(len(patches), 1, dtype=torch.float64)], 1)
    targets = torch.cat([y.permute(0, 2, 3, 1).reshape(-1, 16) for y in ys]).double()
    solution = torch.linalg.lstsq(patches, targets).solution
    fitted = torch.cat([student.project.weight.reshape(16, -1).T, student.project.bias[None]]).detach().double()
    residual = lambda w: float(((patches @ w - targets) ** 2).sum())  # noqa: E731
    assert residual(fitted) <= residual(solution) * 1.01


def test_channels_that_never_contributed_are_recovered_exactly():
    """Zero the projection's weights on half its inputs: pruning those channels loses nothing, and the
    reconstruction finds the original weights on the rest."""
    torch.manual_seed(1)
    teacher = Block().eval()
    with torch.no_grad():
        teacher.project.weight[:, 16:] = 0
        teacher.mid[0].weight[16:] *= 1e-3  # magnitude pruning removes exactly these channels
        teacher.mid[0].bias[16:] = 0
    student = copy.deepcopy(teacher)
    settings = PruneSettings(ratio=0.5, round_to=None, ignored=("project", "expand.0"))
    prune_model(student, torch.randn(1, 3, 16, 16), settings, ["fc"])
    with torch.no_grad():
        student.project.weight.normal_()  # start far from the answer
    reconstruct_layers(student, teacher, batches(), ridge=1e-9)
    assert _output_error(student, teacher, "project") < 1e-6
    assert torch.allclose(student.project.weight, teacher.project.weight[:, :16], atol=1e-4)


def test_modes_restored_and_linear_layers_handled():
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    student = copy.deepcopy(teacher)
    prune_model(student, torch.randn(1, 8), PruneSettings(ratio=0.5, round_to=None, ignored=("2",)), ["4"])
    student.train()
    assert reconstructable_layers(student, teacher) == ["2"]
    report = reconstruct_layers(student, teacher, lambda: (torch.randn(64, 8) for _ in range(4)))
    assert student.training and not teacher.training
    assert report["errors"]["2"]["after"] < report["errors"]["2"]["before"]
