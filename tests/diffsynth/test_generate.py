"""generate(): plans, the contract dataset, round trips and early, named errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from diffsynth import categories_of, generate, settings_of, validate
from diffsynth.categories import resolve_categories
from diffsynth.plan import make_plans, sample_seed

FAST = {"num_inference_steps": 2, "progress": False}


@pytest.fixture(scope="module")
def cats_dogs():
    return generate(["cat", "dog"], num_images=4, model="tiny", **FAST)


def test_generate_returns_a_contract_dataset(cats_dogs):
    ds = cats_dogs
    validate(ds)
    assert len(ds) == 4
    assert ds.features["segments_info"].feature["category_id"].names == ["cat", "dog", "background"]
    assert [c.name for c in categories_of(ds)] == ["cat", "dog", "background"]
    settings = settings_of(ds)
    assert settings["model"] == "tiny" and settings["num_inference_steps"] == 2 and settings["tau"] == 4
    assert ds["image_id"] == [0, 1, 2, 3] and ds["source"] == ["synthetic"] * 4
    for row in ds:
        assert row["image"].size == (128, 128) and row["width"] == 128 and row["height"] == 128
        semantic = np.asarray(row["semantic"])
        assert set(np.unique(semantic)) <= {0, 1, 2, 255}
        # every prompt names the class the image was planned for
        assert any(name in row["prompt"] for name in ("cat", "dog"))


def test_seeds_are_per_sample_and_reproducible(cats_dogs):
    assert cats_dogs["seed"] == [sample_seed(0, i) for i in range(4)]
    again = generate(["cat", "dog"], num_images=2, model="tiny", **FAST)
    for a, b in zip(cats_dogs.select(range(2)), again, strict=True):
        assert a["prompt"] == b["prompt"] and a["seed"] == b["seed"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["semantic"]), np.asarray(b["semantic"]))


def test_batching_does_not_change_samples(cats_dogs):
    batched = generate(["cat", "dog"], num_images=4, model="tiny", batch_size=3, **FAST)
    for a, b in zip(cats_dogs, batched, strict=True):
        # Batched matmuls round differently in the last bits; JPEG storage can amplify that by a few levels.
        difference = np.abs(np.asarray(a["image"], np.int16) - np.asarray(b["image"], np.int16))
        assert difference.mean() < 0.5 and difference.max() <= 12
        assert a["prompt"] == b["prompt"]


def test_plans_are_class_balanced_and_use_context():
    categories = resolve_categories(["mold", "stain", "pipe", "wall"])
    plans = make_plans(categories, 30, seed=3, context=["wall"])
    counts = Counter(c for p in plans for c in p.classes if c != "wall")
    assert set(counts) == {"mold", "stain", "pipe"} and max(counts.values()) - min(counts.values()) <= 1
    assert all("wall" in p.classes and "wall" in p.prompt for p in plans)
    two = make_plans(categories, 12, classes_per_image=2)
    assert all(len(set(p.classes)) == 2 for p in two)
    assert make_plans(categories, 5, seed=3)[4] == make_plans(categories, 9, seed=3)[4]


def test_user_prompts_find_their_classes():
    categories = resolve_categories(["broken pipe", "stain"])
    plans = make_plans(categories, 3, prompts=["a broken pipe and a stain on a wall", "a stain"])
    assert plans[0].classes == ("broken pipe", "stain") and plans[1].classes == ("stain",)
    with pytest.raises(ValueError, match="names none of the classes"):
        make_plans(categories, 1, prompts=["an empty room"])


def test_image_to_image_and_attention_column(cats_dogs):
    init = [cats_dogs[0]["image"], Image.fromarray(np.full((96, 80, 3), 200, np.uint8))]
    ds = generate(
        ["cat"],
        num_images=3,
        model="tiny",
        init_images=init,
        strength=0.5,
        with_attention=True,
        num_inference_steps=4,
        progress=False,
    )
    validate(ds)
    assert settings_of(ds)["mode"] == "img2img" and settings_of(ds)["strength"] == 0.5
    assert "attention" in ds.column_names


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": []}, "empty"),
        ({"classes": ["cat", "Cat"]}, r"(?i)cat.*twice"),
        ({"num_images": 0}, "num_images"),
        ({"height": 100}, "height"),
        ({"init_images": []}, "init_images"),
        ({"strength": 1.5, "init_images": ["x.png"]}, "strength"),
        ({"threshold": 0.4, "uncertainty_threshold": 0.5}, "threshold"),
        ({"prompts": ["a photo of a horse"]}, "names none of the classes"),
        ({"prompts": ["cat " + "very " * 80]}, "77"),
    ],
)
def test_bad_input_fails_early_and_writes_nothing(kwargs, message, tmp_path):
    args = {"classes": ["cat", "dog"], "num_images": 2, **kwargs}
    out = tmp_path / "out"
    with pytest.raises((ValueError, TypeError), match=message):
        generate(args.pop("classes"), args.pop("num_images"), model="tiny", output_dir=out, **FAST, **args)
    assert not out.exists()


def test_unreadable_init_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        generate(["cat"], 1, model="tiny", init_images=[str(bad)], **FAST)


def test_importing_the_submodule_does_not_shadow_the_function():
    import diffsynth
    import diffsynth.generation  # the submodule has its own name: importing it rebinds no package attribute

    assert callable(diffsynth.generate) and diffsynth.generate.__name__ == "generate"
    assert diffsynth.generate is diffsynth.generation.generate


def test_no_submodule_shadows_a_public_name():
    """Importing every submodule binds each as a package attribute; none may share a public name's name."""
    import importlib
    import pkgutil

    import diffsynth

    for info in pkgutil.walk_packages(diffsynth.__path__, "diffsynth."):
        importlib.import_module(info.name)
    for name in diffsynth.__all__:
        value = getattr(diffsynth, name)
        assert not isinstance(value, type(diffsynth)), f"diffsynth.{name} is a module"
