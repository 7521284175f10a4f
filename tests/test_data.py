"""Datasets: the shapes generator, the COCO reader's bad-data errors, transforms and the batch sampler."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.data.coco import BadDataError, CocoInstances, DatasetNotFoundError
from maskrcnn.data.sampler import GroupedBatchSampler, same_size_batches
from maskrcnn.data.shapes import SHAPE_CLASSES, ensure_shapes_dataset
from maskrcnn.data.transforms import KeyedAugmentation, RandomHorizontalFlip

SMALL = {"num_train": 12, "num_val": 4, "image_size": 96, "min_size": 12, "max_size": 48, "workers": 1}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("shapes") / "s", **SMALL)


def test_shapes_load_in_pycocotools_and_round_trip(shapes_root):
    coco = COCO(str(shapes_root / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 12
    for ann in anns:
        mask = coco.annToMask(ann)
        assert mask.sum() == pytest.approx(ann["area"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    for image in coco.loadImgs(coco.getImgIds()):
        with Image.open(shapes_root / "train" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) == (96, 96)


def test_shapes_masks_differ_from_their_boxes(shapes_root):
    """The point of the dataset: a box does not tell the mask (rings have holes, triangles miss corners)."""
    coco = COCO(str(shapes_root / "annotations" / "instances_train.json"))
    fill = [a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in coco.loadAnns(coco.getAnnIds())]
    assert min(fill) < 0.6 and max(fill) - min(fill) > 0.3


def test_shapes_are_deterministic_and_reused(tmp_path, shapes_root):
    again = ensure_shapes_dataset(tmp_path / "s", **SMALL)
    for split in ("train", "val"):
        a = (shapes_root / "annotations" / f"instances_{split}.json").read_bytes()
        assert a == (again / "annotations" / f"instances_{split}.json").read_bytes()
    assert (shapes_root / "train" / "000003.png").read_bytes() == (
        again / "train" / "000003.png"
    ).read_bytes()
    stamp = (again / "spec.json").stat().st_mtime_ns
    ensure_shapes_dataset(tmp_path / "s", **SMALL)
    assert (again / "spec.json").stat().st_mtime_ns == stamp, "same spec: reused, not regenerated"
    ensure_shapes_dataset(tmp_path / "s", **{**SMALL, "num_val": 2})
    assert len(json.loads((again / "annotations" / "instances_val.json").read_text())["images"]) == 2


def test_dataset_returns_documented_shapes(shapes_root):
    ds = CocoInstances(shapes_root / "train", shapes_root / "annotations" / "instances_train.json")
    image, target = ds[0]
    m = len(target["boxes"])
    assert (
        image.dtype == torch.float32 and image.shape == (3, 96, 96) and 0 <= image.min() <= image.max() <= 1
    )
    assert target["boxes"].shape == (m, 4) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (m, 96, 96) and target["masks"].dtype == torch.uint8
    assert target["crowd_boxes"].shape == (0, 4) and target["image_id"] == 1
    assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    assert ds.num_classes == 6 and ds.group_ids().tolist() == [0] * len(ds)


def _write_coco(tmp_path, images, annotations, categories=None, make_files=True):
    (tmp_path / "img").mkdir(exist_ok=True)
    if make_files:
        for im in images:
            Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(
                tmp_path / "img" / im["file_name"]
            )
    path = tmp_path / "instances.json"
    cats = categories or [{"id": 1, "name": "a"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return tmp_path / "img", path


def _image(i, w=20, h=10):
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def _ann(i, image_id, bbox, seg=None, cat=1, crowd=0):
    x, y, w, h = bbox
    seg = seg if seg is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {
        "id": i,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "segmentation": seg,
        "iscrowd": crowd,
    }


def test_missing_annotation_file_suggests_shapes(tmp_path):
    (tmp_path / "img").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)instances\.json.*COCO_ROOT.*data=shapes"):
        CocoInstances(tmp_path / "img", tmp_path / "instances.json")


def test_malformed_json_names_file_and_line(tmp_path):
    (tmp_path / "img").mkdir()
    path = tmp_path / "instances.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(BadDataError, match=r"instances\.json: malformed JSON at line 2"):
        CocoInstances(tmp_path / "img", path)


def test_annotation_with_missing_image_id(tmp_path):
    img, ann = _write_coco(tmp_path, [_image(1)], [_ann(7, 99, [1, 1, 5, 5])])
    with pytest.raises(
        BadDataError, match=r"instances\.json: annotation id 7 references missing image id 99"
    ):
        CocoInstances(img, ann)


def test_polygon_with_two_points(tmp_path):
    img, ann = _write_coco(tmp_path, [_image(1)], [_ann(5, 1, [1, 1, 5, 5], seg=[[1, 1, 5, 5]])])
    with pytest.raises(BadDataError, match=r"annotation id 5: polygon with 2.0 points"):
        CocoInstances(img, ann)


def test_degenerate_boxes_are_dropped_with_a_warning(tmp_path):
    anns = [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 1, [3, 3, 0, 4]), _ann(3, 1, [3, 3, -2, 4])]
    img, path = _write_coco(tmp_path, [_image(1)], anns)
    with pytest.warns(UserWarning, match=r"dropped 2 annotation\(s\).*annotation ids: 2, 3"):
        ds = CocoInstances(img, path)
    assert len(ds[0][1]["boxes"]) == 1


def test_missing_and_corrupt_images_error_or_skip(tmp_path):
    img, path = _write_coco(tmp_path, [_image(1), _image(2), _image(3)], [])
    (img / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (img / "3.png").unlink()
    ds = CocoInstances(img, path)
    with pytest.raises(BadDataError, match=r"2\.png: cannot read image id 2"):
        ds[1]
    with pytest.raises(BadDataError, match=r"3\.png: cannot read image id 3"):
        ds[2]
    skipping = CocoInstances(img, path, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping bad image"):
        _, target = skipping[1]
    assert target["image_id"] == 1 and target["skipped_image_ids"] == [2, 3], "the count travels with the sample"
    assert "skipped_image_ids" not in skipping[0][1]


def test_non_contiguous_categories_map_both_ways(tmp_path):
    cats = [{"id": 90, "name": "z"}, {"id": 3, "name": "c"}, {"id": 17, "name": "q"}]
    img, path = _write_coco(tmp_path, [_image(1)], [_ann(1, 1, [1, 1, 5, 5], cat=90)], categories=cats)
    ds = CocoInstances(img, path)
    assert ds.category_id_to_contiguous == {3: 1, 17: 2, 90: 3}
    assert ds.contiguous_to_category_id == {1: 3, 2: 17, 3: 90}
    assert ds.category_names == ["c", "q", "z"]
    assert ds[0][1]["labels"].tolist() == [3]


def test_crowd_only_and_empty_images_load(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))
    crowd = _ann(1, 1, [0, 0, 20, 10], seg={"size": [10, 20], "counts": rle["counts"].decode()}, crowd=1)
    img, path = _write_coco(tmp_path, [_image(1), _image(2)], [crowd])
    ds = CocoInstances(img, path)
    _, t1 = ds[0]
    _, t2 = ds[1]
    assert t1["crowd_boxes"].tolist() == [[0.0, 0.0, 20.0, 10.0]], "a crowd region is a crowd box only"
    assert t1["boxes"].shape == (0, 4) and t1["masks"].shape == (0, 10, 20) and t1["labels"].shape == (0,)
    assert t2["boxes"].shape == (0, 4) and t2["masks"].shape == (0, 10, 20) and t2["crowd_boxes"].shape == (0, 4)


def test_instances_and_crowd_regions_come_apart_in_file_order(tmp_path):
    """[instance, crowd, instance]: boxes, labels and masks are the two instances, aligned; the crowd a box."""
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))
    crowd = _ann(2, 1, [0, 0, 20, 10], seg={"size": [10, 20], "counts": rle["counts"].decode()}, crowd=1)
    anns = [_ann(1, 1, [1, 1, 4, 3], cat=1), crowd, _ann(3, 1, [10, 2, 6, 5], cat=2)]
    img, path = _write_coco(tmp_path, [_image(1)], anns, categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    _, target = CocoInstances(img, path)[0]
    assert target["boxes"].tolist() == [[1.0, 1.0, 5.0, 4.0], [10.0, 2.0, 16.0, 7.0]]
    assert target["labels"].tolist() == [1, 2] and target["crowd_boxes"].tolist() == [[0.0, 0.0, 20.0, 10.0]]
    assert [int(m.sum()) for m in target["masks"]] == [12, 30], "each mask is its own instance's box"


def test_filter_empty_leaves_out_images_without_instances(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))
    crowd = _ann(1, 2, [0, 0, 20, 10], seg={"size": [10, 20], "counts": rle["counts"].decode()}, crowd=1)
    anns = [_ann(2, 1, [1, 1, 5, 5]), crowd, _ann(3, 4, [1, 1, 0, 5]), _ann(4, 5, [2, 2, 4, 4])]
    img, path = _write_coco(tmp_path, [_image(i) for i in range(1, 6)], anns)
    assert len(CocoInstances(img, path)) == 5
    with pytest.warns(UserWarning, match=r"instances\.json: left out 3 of 5 images without annotations"):
        ds = CocoInstances(img, path, filter_empty=True)
    assert ds.image_ids.tolist() == [1, 5], "crowd-only (2), none (3) and zero-size-box-only (4) are left out"
    assert [ds[i][1]["boxes"].shape[0] for i in range(len(ds))] == [1, 1]


def test_validation_batches_hold_one_image_size():
    sizes = [(480, 640), (427, 640), (480, 640), (640, 480), (480, 640), (427, 640), (480, 640)]
    batches = same_size_batches(sizes, batch_size=2)
    assert batches == [[0, 2], [1, 5], [3], [4, 6]]
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    assert all(len({sizes[i] for i in b}) == 1 for b in batches)


def test_horizontal_flip_moves_boxes_with_masks():
    image = torch.zeros(3, 4, 6)
    masks = torch.zeros(1, 4, 6, dtype=torch.uint8)
    masks[0, 1:3, 0:2] = 1
    target = {"boxes": torch.tensor([[0.0, 1.0, 2.0, 3.0]]), "masks": masks, "labels": torch.tensor([1])}
    _, flipped = RandomHorizontalFlip(1.0)(image, target, torch.Generator())
    assert flipped["boxes"].tolist() == [[4.0, 1.0, 6.0, 3.0]]
    ys, xs = torch.nonzero(flipped["masks"][0], as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1) == (4, 6)
    assert RandomHorizontalFlip(0.0)(image, target, torch.Generator())[1] is target


def test_grouped_batches_share_aspect_and_shard_disjointly():
    groups = np.array([0, 1] * 20 + [0] * 7)
    shards = [list(GroupedBatchSampler(groups, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) > 0
    seen = [i for shard in shards for batch in shard for i, _ in batch]
    assert len(seen) == len(set(seen)), "ranks see disjoint images"
    for batch in shards[0] + shards[1]:
        assert len(batch) == 4 and len({int(groups[i]) for i, _ in batch}) == 1
    sampler = GroupedBatchSampler(groups, 4, seed=3)
    first = list(sampler)
    assert list(sampler) == first, "same epoch, same order"
    assert {epoch for batch in first for _, epoch in batch} == {0}
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and {epoch for batch in second for _, epoch in batch} == {1}


def test_sampler_resumes_mid_epoch_once():
    sampler = GroupedBatchSampler(np.zeros(40), 4, seed=1)
    full = list(sampler)
    sampler.resume_at(7)
    assert list(sampler) == full[7:]
    assert list(sampler) == full, "only the first iteration after resume_at skips"
    with pytest.raises(ValueError, match="resume at batch 11 of an epoch of 10"):
        sampler.resume_at(11)


def test_lightning_reaches_the_batch_samplers_epoch():
    # Lightning calls set_epoch on dataloader.sampler and dataloader.batch_sampler.sampler only.
    from lightning_fabric.utilities.data import _set_sampler_epoch

    keys = KeyedAugmentation([(i, {}) for i in range(40)], lambda image, target, generator: (image, target), seed=0)
    loader = torch.utils.data.DataLoader(
        keys, batch_sampler=GroupedBatchSampler(np.zeros(40), 4, seed=1), collate_fn=lambda b: [i for i, _ in b]
    )
    first = list(loader)
    _set_sampler_epoch(loader, 1)
    second = list(loader)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(40))
    assert first != second, "a new epoch reshuffles"


def test_augmentation_depends_only_on_seed_epoch_and_index():
    image = torch.zeros(3, 4, 6)
    target = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "masks": torch.zeros(1, 4, 6, dtype=torch.uint8)}
    dataset = KeyedAugmentation([(image, target)] * 16, RandomHorizontalFlip(0.5), seed=0)

    def flips(epoch, seed=0):
        dataset.seed = seed
        return [dataset[(i, epoch)][1]["boxes"][0, 0].item() for i in range(16)]

    torch.manual_seed(123)
    first = flips(0)
    torch.manual_seed(456)  # the global RNG (a worker's, a resumed run's) plays no part
    assert flips(0) == first
    assert list(reversed([dataset[(i, 0)][1]["boxes"][0, 0].item() for i in reversed(range(16))])) == first
    assert set(first) == {0.0, 4.0}, "both outcomes occur in 16 draws"
    assert flips(1) != first and flips(0, seed=1) != first


def test_annotations_live_in_flat_arrays_not_per_image_objects(shapes_root):
    """Forked DataLoader workers copy every page whose Python objects they touch (reference counts), so the
    dataset holds numpy arrays, never a Python container that grows with the number of images/annotations."""
    ds = CocoInstances(shapes_root / "train", shapes_root / "annotations" / "instances_train.json")
    assert len(ds) == 12 and len(ds._ann_ids) >= 12
    for name, value in vars(ds).items():
        if isinstance(value, list | dict | tuple | set):
            assert len(value) <= ds.num_classes, f"{name} grows with the data ({len(value)} entries)"
        elif isinstance(value, np.ndarray):
            assert value.dtype != object, f"{name} is an array of Python objects"
