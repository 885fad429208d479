"""Write assets/sample.png, the image the demo edits: a scene from the bundled model's own world
(varedit.train.data), a large red circle and a large blue square on white, 64x64. Deterministic;
rerun to regenerate."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from varedit.train.data import Obj, Scene, render


def make_sample() -> Image.Image:
    scene = Scene(
        background="white",
        objects=(
            Obj(shape="circle", color="red", size="large", cell=3),  # middle left
            Obj(shape="square", color="blue", size="large", cell=5),  # middle right
        ),
    )
    return Image.fromarray(render(scene))


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "assets" / "sample.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_sample().save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
