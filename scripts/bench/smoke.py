"""Check a running service end to end on real photos: every endpoint answers, and right.

    python -m scripts smoke --url http://127.0.0.1:8000

Photos: scikit-image's cat, Darknet's dog.jpg and the face_recognition photos that
scripts/recipes/build_models.py fetched into its cache. Exits non-zero on the first wrong answer.
"""

from __future__ import annotations

import argparse
import io


def main(argv: list[str] | None = None) -> int:
    import httpx2 as httpx
    import skimage.data
    from PIL import Image

    from scripts.recipes.defaults import testdata_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG", quality=90)
    cat = buf.getvalue()
    dog = testdata_path("dog.jpg").read_bytes()
    obama, obama2, biden = (
        testdata_path(f"{n}.jpg").read_bytes() for n in ("obama", "obama2", "biden")
    )
    failures = []

    def check(name: str, ok: bool, detail: object) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            failures.append(name)

    with httpx.Client(base_url=args.url, timeout=60) as client:
        r = client.post("/classify", files={"image": ("cat.jpg", cat)}).json()
        labels = [p["label"] for p in r["predictions"]]
        check(
            "/classify cat", bool({"Egyptian cat", "tabby", "tiger cat"} & set(labels[:2])), labels
        )
        r = client.post("/detect", files={"image": ("dog.jpg", dog)}).json()
        found = {d["label"] for d in r["detections"]}
        check("/detect dog.jpg", {"dog", "bicycle"} <= found, sorted(found))
        r = client.post("/segment?mask_format=rle", files={"image": ("dog.jpg", dog)})
        body = r.json()
        check(
            "/segment answers",
            r.status_code == 200 and "instances" in body,
            f"{r.status_code}, {len(body.get('instances', []))} instances",
        )
        for other, name, same in ((obama2, "obama2", True), (biden, "biden", False)):
            verdict = client.post(
                "/verify-faces", files={"image_a": ("a.jpg", obama), "image_b": ("b.jpg", other)}
            ).json()
            check(
                f"/verify-faces obama vs {name}",
                verdict["verified"] is same,
                f"similarity {verdict['similarity']}",
            )
    return 1 if failures else 0
