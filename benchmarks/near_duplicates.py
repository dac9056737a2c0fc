"""Find photos of a folder that are one photo: copies, rescales, crops, re-encodes.

A held-out test photo whose copy is among the training photos is no held-out photo: the
victims (and the generator) have seen it. Every pair of photos is matched by ORB features
(on copies whose long side is 320 px) and a RANSAC homography; pairs with at least
``--inliers`` inliers are one photo, and pairs are joined into groups. Run once per data
folder (600 photos: about 5 minutes on one core); ``real_data.PETS_SAME_PHOTO`` holds its
answer for the pets::

    python benchmarks/near_duplicates.py ../shared/data/pets/images [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

SIDE = 320  # long side the features are found at
MIN_INLIERS = 100  # one photo; photos of one sitting share 20 to 75


def _features(path: str, orb):
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"{path}: not an image")
    scale = SIDE / max(image.shape)
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return orb.detectAndCompute(image, None)


def inliers(first, second, matcher) -> int:
    """RANSAC homography inliers between two photos' (keypoints, descriptors)."""
    (k1, d1), (k2, d2) = first, second
    if d1 is None or d2 is None or len(k1) < 10 or len(k2) < 10:
        return 0
    pairs = matcher.knnMatch(d1, d2, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.75 * m[1].distance]
    if len(good) < 12:
        return 0
    src = np.float32([k1[m.queryIdx].pt for m in good])
    dst = np.float32([k2[m.trainIdx].pt for m in good])
    _, inlier_mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    return 0 if inlier_mask is None else int(inlier_mask.sum())


def same_photo_groups(paths: list, min_inliers: int = MIN_INLIERS, progress=False) -> list:
    """Groups (sorted lists of file stems, each of two or more) of ``paths`` that are one
    photo, sorted by their first stem."""
    orb, matcher = cv2.ORB_create(1000), cv2.BFMatcher(cv2.NORM_HAMMING)
    features = [_features(p, orb) for p in paths]
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = itertools.combinations(range(len(paths)), 2)
    total = len(paths) * (len(paths) - 1) // 2
    for i, j in tqdm(pairs, total=total, desc="pairs", disable=not progress):
        if inliers(features[i], features[j], matcher) >= min_inliers:
            parent[root(i)] = root(j)
    groups: dict = {}
    for i, path in enumerate(paths):
        groups.setdefault(root(i), []).append(os.path.splitext(os.path.basename(path))[0])
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder of photos")
    parser.add_argument("--inliers", type=int, default=MIN_INLIERS, help="one photo from")
    parser.add_argument("--json", help="write the groups here too")
    args = parser.parse_args(argv)
    names = sorted(n for n in os.listdir(args.folder) if not n.startswith("."))
    paths = [os.path.join(args.folder, n) for n in names]
    groups = same_photo_groups(paths, args.inliers, progress=True)
    for group in groups:
        print(" ".join(group))
    print(f"{len(groups)} groups of one photo among {len(paths)}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(groups, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
