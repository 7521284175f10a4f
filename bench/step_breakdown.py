"""Where a training step's time goes: per component of the detector, forward and backward apart.

Components (COMPONENTS), for our detector and torchvision's alike:
  transform (resize + normalise), backbone (with the FPN), rpn (with its losses),
  box (box extractor, box head, box predictor, box losses),
  mask (mask extractor, mask head, mask predictor, mask targets and mask loss).

Forward: every part (a module of the detector, or a loss function of the RoI heads, PARTS) runs inside a
torch.profiler range ``bench::<part>`` and, when no other part is open, a Stopwatch section
``forward/<component>`` (device-synchronized wall time). A part inside another part (C4's res5, shared by the box
and mask heads; torchvision's mask-target crop inside its mask loss) belongs to the outer one, so nothing is counted
twice.

Backward: the autograd engine runs every graph node inside an event
``autograd::engine::evaluate_function: <Node>``, whose ``sequence_nr`` is the node's sequence number. The forward op
that created the node recorded the same number (the autograd dispatcher stamps an op with the next sequence number
before the op makes its node), so the node's time goes to the component whose range holds the last forward op
with that number. Checked on torch 2.14 (CPU): the backward nodes of the RoI ops land in their extractors' ranges,
the convolutions' in the backbone and the RPN. Seconds are the nodes' inclusive CPU time on the CPU, their
kernels' device time on CUDA.

What the components leave ("rest"): forward/rest is the forward time outside the parts (proposal sampling,
selecting the positives, summing the losses); backward/rest is the backward wall time outside attributed nodes
(AccumulateGrad into .grad, the nodes of forward ops outside the parts, the engine itself); rest is the step time
outside data, forward, backward and optimizer. So every key of `breakdown` together is the step.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator

import torchvision.models.detection.roi_heads as tv_heads
from torch import nn
from torch.profiler import record_function

import roi_heads.heads

COMPONENTS = ("transform", "backbone", "rpn", "box", "mask")
PHASES = ("data", "forward", "backward", "optimizer")
PREFIX = "bench::"  # profiler ranges of the parts
EVALUATE = "autograd::engine::evaluate_function"

# (component, part, attribute paths on the detector: ours first, then torchvision's MaskRCNN)
MODULE_PARTS = (
    ("transform", "transform", ("transform",)),
    ("backbone", "backbone", ("backbone",)),
    ("rpn", "rpn", ("rpn",)),
    ("box", "box_extractor", ("roi_heads.box_extractor", "roi_heads.box_roi_pool")),
    ("box", "box_head", ("roi_heads.box_head",)),
    ("box", "box_predictor", ("roi_heads.box_predictor",)),
    ("mask", "mask_extractor", ("roi_heads.mask_extractor", "roi_heads.mask_roi_pool")),
    ("mask", "mask_head", ("roi_heads.mask_head",)),
    ("mask", "mask_predictor", ("roi_heads.mask_predictor",)),
)
# (component, part, module, function): the RoI heads' losses, looked up in their module at call time, so patching
# the module attribute reaches them (ours: roi_heads/losses.py imported into roi_heads.heads)
FUNCTION_PARTS = (
    ("box", "box_losses", roi_heads.heads, "box_losses"),
    ("box", "box_losses", tv_heads, "fastrcnn_loss"),
    ("mask", "mask_targets", roi_heads.heads, "mask_targets"),
    ("mask", "mask_loss", roi_heads.heads, "mask_loss"),
    ("mask", "mask_loss", tv_heads, "maskrcnn_loss"),
    ("mask", "mask_targets", tv_heads, "project_masks_on_boxes"),
)
COMPONENT_OF = {part: component for component, part, *_ in (*MODULE_PARTS, *FUNCTION_PARTS)}


def find_module(model: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    """The first of the dotted attribute `paths` that `model` has."""
    for path in paths:
        with contextlib.suppress(AttributeError):
            return functools.reduce(getattr, path.split("."), model)
    return None


@contextlib.contextmanager
def instrumented(model: nn.Module, section: Callable[[str], contextlib.AbstractContextManager]) -> Iterator[Counter]:
    """Inside: the parts of `model` run in their profiler ranges and (outermost parts) in `section(forward/<c>)`.
    Yields a Counter that gets "mask_rois": the RoIs the mask extractor pooled (the mask branch's positives)."""
    open_parts: list[contextlib.ExitStack] = []
    stats: Counter = Counter()

    def enter(component: str, part: str) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(record_function(PREFIX + part))
        if not open_parts:
            stack.enter_context(section(f"forward/{component}"))
        open_parts.append(stack)

    def leave() -> None:
        open_parts.pop().close()

    handles = []
    for component, part, paths in MODULE_PARTS:
        module = find_module(model, paths)
        if module is None:
            continue

        def pre_hook(_module: nn.Module, args: tuple, component: str = component, part: str = part) -> None:
            if part == "mask_extractor":  # ours (features, boxes, sizes), torchvision's (features, proposals, ...)
                stats["mask_rois"] += sum(len(boxes) for boxes in args[1])
            enter(component, part)

        handles += [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(lambda *_: leave())]

    def ranged(fn: Callable, component: str, part: str) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            enter(component, part)
            try:
                return fn(*args, **kwargs)
            finally:
                leave()

        return call

    originals = [(module, name, getattr(module, name)) for _, _, module, name in FUNCTION_PARTS]
    for (component, part, _, _), (module, name, fn) in zip(FUNCTION_PARTS, originals, strict=True):
        setattr(module, name, ranged(fn, component, part))
    try:
        yield stats
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
        for handle in handles:
            handle.remove()


def ancestors(event) -> Iterator:
    """The profiler events enclosing `event`, innermost first."""
    event = event.cpu_parent
    while event is not None:
        yield event
        event = event.cpu_parent


def in_backward(event) -> bool:
    """Did the autograd engine run this profiler event (the backward pass)?"""
    return any(e.name.startswith(EVALUATE) for e in (event, *ancestors(event)))


def outer_component(event) -> str | None:
    """The component of the outermost part range around `event` (None: outside every part)."""
    parts = [e.name[len(PREFIX) :] for e in (event, *ancestors(event)) if e.name.startswith(PREFIX)]
    return COMPONENT_OF.get(parts[-1]) if parts else None


def backward_seconds(events: list, device_time: bool) -> Counter:
    """Seconds of the backward nodes per component (node -> component by sequence_nr, module docstring);
    nodes without a component are left out (they are in backward/rest)."""
    owner: dict[int, str | None] = {}
    for event in sorted(events, key=lambda e: e.time_range.start):  # the last op with a number made the node
        if event.sequence_nr >= 0 and not in_backward(event):
            owner[event.sequence_nr] = outer_component(event)
    seconds: Counter = Counter()
    for event in events:
        if event.name.startswith(EVALUATE) and not any(a.name.startswith(EVALUATE) for a in ancestors(event)):
            component = owner.get(event.sequence_nr)
            if component is not None:
                seconds[component] += (event.device_time_total if device_time else event.cpu_time_total) / 1e6
    return seconds


def breakdown_seconds(watch_seconds: dict[str, float], backward: Counter) -> dict[str, float]:
    """The step's seconds by key: data, forward/<component>, forward/rest, backward/<component>, backward/rest,
    optimizer, rest. watch_seconds: the Stopwatch's "step", PHASES and forward/<component> sections."""
    out = {"data": watch_seconds.get("data", 0.0)}
    for phase, seconds in (("forward", watch_seconds), ("backward", backward)):
        parts = {c: seconds.get(f"{phase}/{c}" if phase == "forward" else c, 0.0) for c in COMPONENTS}
        out.update({f"{phase}/{c}": s for c, s in parts.items()})
        out[f"{phase}/rest"] = watch_seconds.get(phase, 0.0) - sum(parts.values())
    out["optimizer"] = watch_seconds.get("optimizer", 0.0)
    out["rest"] = watch_seconds["step"] - sum(watch_seconds.get(p, 0.0) for p in PHASES)
    return out


def by_component(shares: dict[str, float]) -> dict[str, float]:
    """breakdown keys -> component totals (forward + backward), with data, optimizer and all of rest."""
    out = {c: shares[f"forward/{c}"] + shares[f"backward/{c}"] for c in COMPONENTS}
    out.update(data=shares["data"], optimizer=shares["optimizer"],
               rest=shares["forward/rest"] + shares["backward/rest"] + shares["rest"])  # fmt: skip
    return out
