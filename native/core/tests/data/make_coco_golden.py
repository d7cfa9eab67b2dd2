#!/usr/bin/env python3
"""Regenerates coco_eval_golden.json, which coco_eval_test.cpp compares coco_evaluate against.

pycocotools is the reference: for random detection problems (several images and categories,
crowd regions, segment areas differing from w*h, boxes of every COCO area range, tied scores,
box edges on half pixels so IoUs land exactly on thresholds, detections beyond max_detections,
detection-only categories), it writes COCOeval(iouType='bbox').stats. Run from the repository
root with pycocotools (and numpy) importable:

    python3 native/core/tests/data/make_coco_golden.py

The committed data was written where pycocotools could not be installed, with numpy 1.24 and a
stand-in package: cocoeval.py of cocodataset/cocoapi (master) carried over statement for statement
for iouType 'bbox' (np.float spelled np.float64), COCO's indexing and loadRes for bbox results,
and maskApi.c's bbIou transcribed to Python (the same double operations). Running this script
with the real pycocotools must reproduce the file.

COCOeval.params.maxDets is [1, 10, max_detections]. pycocotools' own stats[0] reads maxDets=100
literally (-1 for any other max_detections); as coco_evaluate does, stats[0] is then recomputed
over the max_detections setting, with the same expression summarize() uses (which, for
max_detections = 10, selects both maxDets entries equal to 10).

Output: "cases", each {"image_ids", "max_detections", "ground_truth": [[image_id, category_id,
x, y, w, h, area or null (= w*h), iscrowd]], "detections": [[image_id, category_id, x, y, w, h,
score]], "stats": the 12 numbers in summarize() order}.
"""
import contextlib
import io
import json
import os
import random

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco_eval_golden.json")


def coordinate(value, style):
    if style == 0:
        return float(round(value))
    if style == 1:
        return round(value * 2) / 2
    return value


def random_box(rng, style):
    scale = rng.choice([(2, 30), (25, 110), (80, 300)])  # small, medium, large (and overlaps)
    w = coordinate(rng.uniform(*scale), style)
    h = coordinate(rng.uniform(*scale), style)
    x = coordinate(rng.uniform(0, 400), style)
    y = coordinate(rng.uniform(0, 400), style)
    return [x, y, max(w, 1.0), max(h, 1.0)]


def jitter(rng, box, amount, style):
    x, y, w, h = box
    dx, dy = rng.uniform(-amount, amount) * w, rng.uniform(-amount, amount) * h
    dw, dh = rng.uniform(-amount, amount) * w, rng.uniform(-amount, amount) * h
    return [coordinate(x + dx, style), coordinate(y + dy, style),
            max(coordinate(w + dw, style), 0.5), max(coordinate(h + dh, style), 0.5)]


def make_case(seed, images, categories, max_gt, max_detections, extra_detections):
    rng = random.Random(seed)
    style = seed % 3
    image_ids = sorted(rng.sample(range(1, 1000), images))
    ground_truth, detections = [], []
    for image_id in image_ids:
        for _ in range(rng.randint(0, max_gt)):
            category = rng.randint(1, categories)
            box = random_box(rng, style)
            crowd = rng.random() < 0.1
            area = None if rng.random() < 0.5 else round(box[2] * box[3] * rng.uniform(0.4, 1.0), 3)
            ground_truth.append([image_id, category, *box, area, int(crowd)])
            # Detections of this object: none, one, or duplicates, maybe in another category.
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                det_category = category if rng.random() < 0.85 else rng.randint(1, categories + 1)
                det_box = jitter(rng, box, rng.choice([0.0, 0.05, 0.15, 0.3]), style)
                if crowd and rng.random() < 0.5:  # a small detection inside the crowd region
                    det_box = [box[0] + box[2] * 0.25, box[1] + box[3] * 0.25, box[2] * 0.3, box[3] * 0.3]
                detections.append([image_id, det_category, *det_box, None])
        for _ in range(rng.randint(0, extra_detections)):
            detections.append([image_id, rng.randint(1, categories + 1), *random_box(rng, style), None])
    if not detections:  # COCO.loadRes needs at least one result
        detections.append([image_ids[0], 1, *random_box(rng, style), None])
    tie_scores = rng.random() < 0.5
    for detection in detections:
        score = rng.random()
        detection[-1] = round(score, 1) if tie_scores else score
    return {"image_ids": image_ids, "max_detections": max_detections, "ground_truth": ground_truth,
            "detections": detections}


def evaluate(case):
    categories = sorted({row[1] for row in case["ground_truth"]} | {row[1] for row in case["detections"]})
    dataset = {
        "images": [{"id": image_id} for image_id in case["image_ids"]],
        "categories": [{"id": category, "name": str(category)} for category in categories],
        "annotations": [],
    }
    for index, (image_id, category, x, y, w, h, area, crowd) in enumerate(case["ground_truth"]):
        dataset["annotations"].append({"id": index + 1, "image_id": image_id, "category_id": category,
                                       "bbox": [x, y, w, h], "area": w * h if area is None else area,
                                       "iscrowd": crowd})
    results = [{"image_id": image_id, "category_id": category, "bbox": [x, y, w, h], "score": score}
               for image_id, category, x, y, w, h, score in case["detections"]]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.maxDets = [1, 10, case["max_detections"]]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [float(value) for value in evaluation.stats]
    if case["max_detections"] != 100:  # summarize()'s _summarize(1, maxDets=max_detections)
        mind = [i for i, m in enumerate(evaluation.params.maxDets) if m == case["max_detections"]]
        s = evaluation.eval["precision"][:, :, :, [0], mind]
        stats[0] = float(np.mean(s[s > -1])) if len(s[s > -1]) else -1.0
    return stats


def main():
    cases = []
    for seed in range(60):
        rng = random.Random(1000 + seed)
        case = make_case(seed, images=rng.randint(1, 6), categories=rng.randint(1, 4), max_gt=rng.randint(1, 8),
                         max_detections=rng.choice([100, 100, 10, 12]), extra_detections=rng.randint(0, 15))
        cases.append(case)
    # Many detections of one category per image, cut by max_detections.
    for seed, max_detections in ((90, 10), (91, 12)):
        cases.append(make_case(seed, images=3, categories=1, max_gt=8, max_detections=max_detections,
                               extra_detections=25))
    # Larger: more than 128 and 8192 averaged entries, so numpy's pairwise summation splits.
    for seed in (100, 101):
        cases.append(make_case(seed, images=40, categories=12, max_gt=6, max_detections=100, extra_detections=4))
    for case in cases:
        case["stats"] = evaluate(case)
    with open(OUT, "w") as out:
        json.dump({"generator": "native/core/tests/data/make_coco_golden.py", "cases": cases}, out)
        out.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
