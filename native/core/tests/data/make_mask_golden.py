#!/usr/bin/env python3
"""Writes mask_golden.json, pycocotools answers that universal_segmentation_test.cpp checks.

Run with pycocotools 2.0.x and numpy:  python make_mask_golden.py [coco-sample/instances.json] > mask_golden.json
(mask_golden.json beside this file; the test finds it beside its own source).
  polygons: segmentation lists decoded by COCO.annToRLE's path (frPyObjects + merge) and
            pycocotools' compressed counts;
  segm:     random COCOeval(iouType='segm') problems and their 12 stats;
  coco_sample: the compressed counts of test/fixtures/coco-sample's six annotations (annToRLE);
  panoptic: random panoptic problems and panopticapi's results. panopticapi is not packaged, so
            pq_single_image and pq_average below are its pq_compute_single_core loop body and
            PQStat.pq_average verbatim, on arrays instead of PNG files (one process).
Deterministic (numpy seed 2024)."""
import contextlib
import io
import json
import os
import sys

import numpy as np
from pycocotools import mask as M
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def rle_string(rle):
    c = rle["counts"]
    return c.decode() if isinstance(c, bytes) else c


def polygons(rng):
    cases = []
    fixed = [
        (10, 12, [[2, 2, 7, 2, 7, 7, 2, 7]]),                      # 5x5 square
        (10, 12, [[1, 1, 9, 1, 1, 8]]),                            # right triangle
        (10, 12, [[2.3, 1.7, 8.6, 2.2, 5.1, 8.4]]),                # fractional triangle
        (10, 12, [[-3, -2, 20, -1, 15, 14, -4, 12]]),              # larger than the image
        (10, 12, [[1, 1, 4, 1, 4, 4, 1, 4], [6, 5, 10, 5, 10, 9]]),  # two polygons, unioned
        (10, 12, [[1, 1, 1, 1, 6, 1, 6, 6, 6, 6, 1, 6]]),          # repeated points
        (10, 12, [[1, 1, 8, 1, 8, 3], [2, 6, 9, 6]]),              # a later 2-point polygon
        (9, 1, [[0, 0, 1, 0, 1, 9, 0, 9]]),                        # one column
    ]
    for h, w, segm in fixed:
        rle = M.merge(M.frPyObjects(segm, h, w))
        cases.append({"height": h, "width": w, "segmentation": segm, "counts": rle_string(rle)})
    for _ in range(24):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        segm = []
        for _ in range(int(rng.integers(1, 3))):
            n = int(rng.integers(3, 9))
            pts = rng.uniform(-3, max(h, w) + 3, size=2 * n)
            segm.append([round(float(v), 2) for v in pts])
        rle = M.merge(M.frPyObjects(segm, h, w))
        cases.append({"height": h, "width": w, "segmentation": segm, "counts": rle_string(rle)})
    return cases


def random_mask(rng, h, w):
    m = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = y0 + int(rng.integers(1, h)), x0 + int(rng.integers(1, w))
        m[y0:y1, x0:x1] = 1
    return m


def jitter(rng, m):
    dy, dx = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
    out = np.roll(np.roll(m, dy, 0), dx, 1)
    if rng.random() < 0.2:
        out = out.copy()
        out[rng.random(out.shape) < 0.03] ^= 1
    return out


def encode(m):
    return M.encode(np.asfortranarray(m))


def segm_case(rng, index):
    images = []
    gts, dts = [], []
    ann_id = 1
    n_images = int(rng.integers(1, 4))
    # Large enough for every COCO area range (32^2 and 96^2 bounds).
    for i in range(n_images):
        h, w = int(rng.choice([24, 60, 130])), int(rng.choice([30, 80, 200]))
        image_id = 10 + i
        images.append({"id": image_id, "height": h, "width": w})
        for _ in range(int(rng.integers(0, 5))):
            m = random_mask(rng, h, w)
            rle = encode(m)
            crowd = int(rng.random() < 0.15)
            area = float(M.area(rle)) if rng.random() < 0.7 else float(round(rng.uniform(50, 12000), 1))
            gts.append({"id": ann_id, "image_id": image_id, "category_id": int(rng.integers(1, 4)), "iscrowd": crowd,
                        "area": area, "segmentation": {"size": [h, w], "counts": rle_string(rle)}, "_mask": m})
            ann_id += 1
        for g in [g for g in gts if g["image_id"] == image_id]:
            for _ in range(int(rng.integers(0, 3))):
                cat = g["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 4))
                dts.append({"image_id": image_id, "category_id": cat, "score": float(round(rng.random(), 3)),
                            "segmentation": {"size": [h, w], "counts": rle_string(encode(jitter(rng, g["_mask"])))}})
        for _ in range(int(rng.integers(0, 4))):
            dts.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)), "score": float(round(rng.random(), 3)),
                        "segmentation": {"size": [h, w], "counts": rle_string(encode(random_mask(rng, h, w)))}})
    for g in gts:
        del g["_mask"]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": [dict(g) for g in gts], "categories": [{"id": c} for c in (1, 2, 3)]}
    gt.createIndex()
    stats = [-1.0] * 12
    if dts:
        dt = gt.loadRes([dict(d) for d in dts])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = [float(s) for s in ev.stats]
    return {"images": images, "ground_truth": gts, "detections": dts, "stats": stats}


# ---- panopticapi (evaluation.py), the loop body of pq_compute_single_core and pq_average ----
OFFSET = 256 * 256 * 256
VOID = 0


class PQStatCat():
    def __init__(self):
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0


def pq_single_image(pq_stat, pan_gt, pan_pred, gt_ann, pred_ann, categories):
    gt_segms = {el['id']: dict(el) for el in gt_ann['segments_info']}
    pred_segms = {el['id']: dict(el) for el in pred_ann['segments_info']}
    pred_labels_set = set(el['id'] for el in pred_ann['segments_info'])
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(label)
        pred_segms[label]['area'] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]['category_id'] not in categories:
            raise KeyError(label)
    if len(pred_labels_set) != 0:
        raise KeyError(pred_labels_set)
    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
        gt_id = label // OFFSET
        pred_id = label % OFFSET
        gt_pred_map[(gt_id, pred_id)] = intersection
    gt_matched = set()
    pred_matched = set()
    for label_tuple, intersection in gt_pred_map.items():
        gt_label, pred_label = label_tuple
        if gt_label not in gt_segms:
            continue
        if pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]['iscrowd'] == 1:
            continue
        if gt_segms[gt_label]['category_id'] != pred_segms[pred_label]['category_id']:
            continue
        union = pred_segms[pred_label]['area'] + gt_segms[gt_label]['area'] - intersection - gt_pred_map.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            pq_stat[gt_segms[gt_label]['category_id']].tp += 1
            pq_stat[gt_segms[gt_label]['category_id']].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info['iscrowd'] == 1:
            crowd_labels_dict[gt_info['category_id']] = gt_label
            continue
        pq_stat[gt_info['category_id']].fn += 1
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        if pred_info['category_id'] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info['category_id']], pred_label), 0)
        if intersection / pred_info['area'] > 0.5:
            continue
        pq_stat[pred_info['category_id']].fp += 1


def pq_average(pq_stat, categories, isthing):
    pq, sq, rq, n = 0, 0, 0, 0
    for label, label_info in categories.items():
        if isthing is not None:
            cat_isthing = label_info['isthing'] == 1
            if isthing != cat_isthing:
                continue
        iou = pq_stat[label].iou
        tp = pq_stat[label].tp
        fp = pq_stat[label].fp
        fn = pq_stat[label].fn
        if tp + fp + fn == 0:
            continue
        n += 1
        pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
        sq_class = iou / tp if tp != 0 else 0
        rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
        pq += pq_class
        sq += sq_class
        rq += rq_class
    if n == 0:
        return [0.0, 0.0, 0.0, 0]
    return [pq / n, sq / n, rq / n, n]


def random_panoptic_map(rng, h, w, n):
    m = np.zeros((h, w), np.int64)
    for i in range(1, n + 1):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        m[y0:y0 + int(rng.integers(2, h)), x0:x0 + int(rng.integers(2, w))] = i
    return m


def panoptic_case(rng):
    categories = {1: {"id": 1, "isthing": 1}, 2: {"id": 2, "isthing": 1}, 3: {"id": 3, "isthing": 0}, 4: {"id": 4, "isthing": 0}}
    pq_stat = {c: PQStatCat() for c in categories}
    images = []
    for _ in range(int(rng.integers(1, 5))):
        h, w = int(rng.integers(6, 20)), int(rng.integers(6, 20))
        gt = random_panoptic_map(rng, h, w, int(rng.integers(1, 7)))
        gt_info = [{"id": int(i), "category_id": int(rng.integers(1, 5)), "iscrowd": int(rng.random() < 0.15)}
                   for i in np.unique(gt) if i != 0]
        pred = np.where(rng.random((h, w)) < 0.9, gt, 0)
        pred = np.roll(pred, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), (0, 1))
        for _ in range(int(rng.integers(0, 3))):  # some extra predicted segments
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            pred[y0:y0 + int(rng.integers(1, h)), x0:x0 + int(rng.integers(1, w))] = int(pred.max()) + 1
        relabel = {int(i): int(k + 10) for k, i in enumerate(np.unique(pred)) if i != 0}
        pred = np.vectorize(lambda v: relabel.get(int(v), 0))(pred).astype(np.int64)
        gt_categories = {el["id"]: el["category_id"] for el in gt_info}
        pred_info = []
        for old, new in relabel.items():
            category = gt_categories.get(old, int(rng.integers(1, 5)))
            if rng.random() < 0.2:
                category = int(rng.integers(1, 5))
            pred_info.append({"id": new, "category_id": category})
        gt_ann = {"segments_info": [dict(el, area=int((gt == el["id"]).sum())) for el in gt_info]}
        pq_single_image(pq_stat, gt, pred, gt_ann, {"segments_info": pred_info}, categories)
        images.append({"height": h, "width": w, "ground_truth": gt.flatten().tolist(), "ground_truth_segments": gt_info,
                       "prediction": pred.flatten().tolist(), "prediction_segments": pred_info})
    return {"categories": list(categories.values()), "images": images,
            "all": pq_average(pq_stat, categories, None), "things": pq_average(pq_stat, categories, True),
            "stuff": pq_average(pq_stat, categories, False),
            "stats": {str(c): [s.iou, s.tp, s.fp, s.fn] for c, s in pq_stat.items()}}


def main():
    rng = np.random.default_rng(2024)
    out = {"polygons": polygons(rng), "segm": []}
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print their progress
        while len(out["segm"]) < 16:
            case = segm_case(rng, len(out["segm"]))
            if case["detections"]:
                out["segm"].append(case)
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "../../../../test/fixtures/coco-sample/instances.json")
    with open(sys.argv[1] if len(sys.argv) > 1 else default) as f:
        sample = json.load(f)
    image = sample["images"][0]
    out["coco_sample"] = {str(a["id"]): rle_string(M.merge(M.frPyObjects(a["segmentation"], image["height"], image["width"])))
                          for a in sample["annotations"]}
    out["panoptic"] = [panoptic_case(rng) for _ in range(12)]
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
