"""Synthetic instruction-editing data: coloured shapes on a plain background.

Every record is (source image, instruction, target image, mask) where the target is
rendered from an edited scene description, so the right answer is known exactly.
Generation is a pure function of (seed, split, index): records can be drawn in any order
and in any process and come out identical.

Scenes live on a 3x3 grid of cells (named "top left" ... "bottom right"); each object is
one of a few shapes, colours and two sizes, centred in its cell, so objects never overlap
and every position an instruction can name is unambiguous.  Objects in one scene have
distinct (colour, shape) pairs, so "the red circle" always picks exactly one object.

The held-out split ("test") uses instruction templates and attribute combinations that
the training split ("train") never produces; all its words still occur in training
instructions, so a word-level tokenizer built from training text covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

RES = 64  # image side (pixels)
SUPERSAMPLE = 4  # render at 4x and box-filter down: soft, anti-aliased edges

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 135, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
OBJECT_COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
BACKGROUND_COLORS = ["white", "black", "gray", "blue", "yellow", "green"]
SHAPES = ["square", "circle", "triangle", "diamond"]
SIZES = {"small": 6, "large": 9}  # half-extent in pixels
CELL_CENTERS = (11, 32, 53)  # cell centres along each axis (3x3 grid)
POSITIONS = [  # (row, col) -> name
    "top left",
    "top middle",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
]
EDIT_KINDS = ["recolor", "remove", "add", "move", "resize", "background"]
MASK_DILATE = 2  # the edit may also touch a 2-pixel rim around what changes (anti-aliasing, VAE)

# Instruction templates per kind: (training templates, held-out templates used by the test split only).
# Slots: {obj} "red circle", {color}, {size} "small"/"large", {shape}, {pos}, {bigger}.
TEMPLATES = {
    "recolor": (
        [
            "make the {obj} {color}",
            "change the color of the {obj} to {color}",
            "recolor the {obj} {color}",
            "turn the {obj} {color}",
        ],
        ["change the {obj} to {color}", "set the color of the {obj} to {color}"],
    ),
    "remove": (
        ["remove the {obj}", "delete the {obj}", "erase the {obj}", "get rid of the {obj}"],
        ["remove the {obj} in the image", "delete the {obj} in the image"],
    ),
    "add": (
        [
            "add a {size} {color} {shape} at the {pos}",
            "draw a {size} {color} {shape} in the {pos}",
            "put a {size} {color} {shape} at the {pos} of the image",
            "add a {size} {color} {shape} to the {pos}",
        ],
        ["draw a {size} {color} {shape} at the {pos}", "put a {size} {color} {shape} in the {pos}"],
    ),
    "move": (
        [
            "move the {obj} to the {pos}",
            "put the {obj} in the {pos}",
            "move the {obj} to the {pos} of the image",
            "shift the {obj} to the {pos}",
        ],
        ["put the {obj} at the {pos}", "shift the {obj} to the {pos} of the image"],
    ),
    "resize": (
        [
            "make the {obj} {bigger}",
            "change the size of the {obj} to {size}",
            "resize the {obj} to {size}",
            "make the {obj} {size}",
        ],
        ["set the size of the {obj} to {size}", "make the size of the {obj} {size}"],
    ),
    "background": (
        [
            "change the background to {color}",
            "make the background {color}",
            "set the background color to {color}",
            "recolor the background {color}",
        ],
        ["turn the background {color}", "change the color of the background to {color}"],
    ),
}
BIGGER = {"large": ["bigger", "larger"], "small": ["smaller"]}  # new size -> words


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]


@dataclass
class Record:
    source: np.ndarray  # (RES, RES, 3) uint8
    target: np.ndarray  # (RES, RES, 3) uint8
    mask: np.ndarray  # (RES, RES) bool: pixels the edit may change
    instruction: str
    kind: str
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- rendering


def _shape_mask(shape: str, half: float, cy: float, cx: float, n: int) -> np.ndarray:
    """Boolean coverage of one shape on an n x n supersampled grid (pixel-centre sampling)."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    s = n / RES
    y, x = (ys + 0.5) / s - cy, (xs + 0.5) / s - cx  # in output-pixel units, relative to centre
    if shape == "square":
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if shape == "circle":
        return x * x + y * y <= half * half
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= half * 1.25
    if shape == "triangle":  # apex up, base at y = +half
        return (y <= half) & (y >= -half) & (np.abs(x) <= (y + half) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(obj: Obj) -> np.ndarray:
    """Fractional (anti-aliased) coverage in [0, 1] of an object at RES x RES."""
    n = RES * SUPERSAMPLE
    r, c = divmod(obj.cell, 3)
    m = _shape_mask(obj.shape, SIZES[obj.size], CELL_CENTERS[r], CELL_CENTERS[c], n)
    return m.reshape(RES, SUPERSAMPLE, RES, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """Scene -> (RES, RES, 3) uint8 image."""
    img = np.empty((RES, RES, 3), np.float32)
    img[:] = COLORS[scene.background]
    for obj in scene.objects:
        a = _coverage(obj)[..., None]
        img = img * (1 - a) + np.asarray(COLORS[obj.color], np.float32) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1) & _shift_valid(dy, dx)
    return out


def _shift_valid(dy: int, dx: int) -> np.ndarray:
    """Pixels whose rolled value did not wrap around the border."""
    v = np.ones((RES, RES), bool)
    if dy > 0:
        v[:dy] = False
    elif dy < 0:
        v[dy:] = False
    if dx > 0:
        v[:, :dx] = False
    elif dx < 0:
        v[:, dx:] = False
    return v


def edit_mask(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pixels that differ, grown by MASK_DILATE pixels."""
    return _dilate((source != target).any(-1), MASK_DILATE)


# ----------------------------------------------------------------------------- held-out combinations

# (kind, key) pairs never produced in training; the test split draws only these or held-out templates.
HELD_OUT_COMBOS = {
    ("recolor", ("red", "green")),
    ("recolor", ("blue", "yellow")),
    ("recolor", ("purple", "orange")),
    ("add", ("yellow", "triangle")),
    ("add", ("white", "circle")),
    ("move", ("diamond", 0)),
    ("move", ("circle", 8)),
    ("resize", ("triangle", "green")),
    ("remove", ("orange", "square")),
    ("background", ("gray", "blue")),
    ("background", ("white", "yellow")),
}


def edit_combo(kind: str, meta: dict) -> tuple:
    """The attribute combination of an edit, as `HELD_OUT_COMBOS` lists it with its kind."""
    if kind == "recolor":
        return (meta["from"], meta["to"])
    if kind == "add":
        return (meta["color"], meta["shape"])
    if kind == "move":
        return (meta["shape"], meta["to_cell"])
    if kind == "resize":
        return (meta["shape"], meta["color"])
    if kind == "remove":
        return (meta["color"], meta["shape"])
    return (meta["from"], meta["to"])


# ----------------------------------------------------------------------------- sampling


def _random_scene(rng: np.random.Generator, n_min: int = 1, n_max: int = 3) -> Scene:
    bg = str(rng.choice(BACKGROUND_COLORS))
    n = int(rng.integers(n_min, n_max + 1))
    cells = rng.permutation(9)[:n]
    objs, used = [], set()
    for cell in cells:
        while True:
            color = str(rng.choice([c for c in OBJECT_COLORS if c != bg]))
            shape = str(rng.choice(SHAPES))
            if (color, shape) not in used:
                break
        used.add((color, shape))
        objs.append(Obj(shape, color, str(rng.choice(list(SIZES))), int(cell)))
    return Scene(bg, tuple(objs))


def _sample_edit(rng: np.random.Generator, kind: str) -> tuple[Scene, Scene, dict, dict]:
    """One edit of `kind`: (source scene, target scene, template slots, meta)."""
    need = {"add": (0, 2), "move": (1, 3)}.get(kind, (1, 3))
    src = _random_scene(rng, *need)
    objs = list(src.objects)
    free = [c for c in range(9) if c not in {o.cell for o in objs}]
    used = {(o.color, o.shape) for o in objs}
    if kind == "background":
        colors = [c for c in BACKGROUND_COLORS if c != src.background and c not in {o.color for o in objs}]
        if not colors:
            raise _Retry
        to = str(rng.choice(colors))
        return src, replace(src, background=to), {"color": to}, {"from": src.background, "to": to}
    if kind == "add":
        color = str(rng.choice([c for c in OBJECT_COLORS if c != src.background]))
        shape = str(rng.choice(SHAPES))
        if (color, shape) in used:
            raise _Retry
        new = Obj(shape, color, str(rng.choice(list(SIZES))), int(rng.choice(free)))
        slots = {"size": new.size, "color": color, "shape": shape, "pos": POSITIONS[new.cell]}
        meta = {"color": color, "shape": shape, "size": new.size, "cell": new.cell}
        return src, replace(src, objects=(*objs, new)), slots, meta
    i = int(rng.integers(len(objs)))
    o = objs[i]
    slots = {"obj": o.name}
    meta = {"color": o.color, "shape": o.shape, "size": o.size, "cell": o.cell}
    if kind == "remove":
        del objs[i]
    elif kind == "recolor":
        choices = [
            c for c in OBJECT_COLORS if c not in (o.color, src.background) and (c, o.shape) not in used
        ]
        to = str(rng.choice(choices))
        objs[i] = replace(o, color=to)
        slots["color"] = to
        meta.update({"from": o.color, "to": to})
    elif kind == "move":
        if not free:
            raise _Retry
        to_cell = int(rng.choice(free))
        objs[i] = replace(o, cell=to_cell)
        slots["pos"] = POSITIONS[to_cell]
        meta["to_cell"] = to_cell
    elif kind == "resize":
        new_size = "small" if o.size == "large" else "large"
        objs[i] = replace(o, size=new_size)
        slots.update({"size": new_size, "bigger": str(rng.choice(BIGGER[new_size]))})
        meta["to_size"] = new_size
    return src, replace(src, objects=tuple(objs)), slots, meta


class _Retry(Exception):
    pass


def make_record(seed: int, index: int, split: str = "train", kind: str | None = None) -> Record:
    """Record number `index` of `split` for `seed` (deterministic; independent of other records).

    The test split mixes three sources of novelty in equal parts: held-out templates,
    held-out attribute combinations, and both together.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    kind = kind or EDIT_KINDS[index % len(EDIT_KINDS)]
    train_t, held_t = TEMPLATES[kind]
    novelty = int(rng.integers(3)) if split == "test" else -1  # 0 template, 1 combo, 2 both
    for _ in range(1000):
        try:
            src, tgt, slots, meta = _sample_edit(rng, kind)
        except _Retry:
            continue
        held_combo = (kind, edit_combo(kind, meta)) in HELD_OUT_COMBOS
        if split == "train" and held_combo:
            continue
        if split == "test" and held_combo != (novelty >= 1):
            continue
        if split == "test" and novelty == 1:
            template = str(rng.choice(train_t))
        else:
            template = str(rng.choice(held_t if split == "test" else train_t))
        source, target = render(src), render(tgt)
        if np.array_equal(source, target):
            continue
        meta.update({"source_scene": src, "target_scene": tgt, "template": template})
        return Record(source, target, edit_mask(source, target), template.format(**slots), kind, meta)
    raise RuntimeError(f"could not sample a {kind} edit for index {index}")


def vocabulary() -> list[str]:
    """Every word any template can produce (exhaustive, independent of sampling)."""
    words = set()
    for train_t, held_t in TEMPLATES.values():
        for t in train_t + held_t:
            words.update(w for w in t.split() if not w.startswith("{"))
    words.update(COLORS)
    words.update(SHAPES)
    words.update(SIZES)
    words.update(w for ws in BIGGER.values() for w in ws)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)
