#!/usr/bin/env python
"""Generate the example corpus: OBELICS-format parquet, MMC4-format JSONL and the images they point to.

    python examples/make_corpus.py OUT_DIR [--docs 300] [--mmc4-docs 20] [--seed 0]

Nothing is downloaded. Each document alternates paragraphs of real-looking
English sentences (templated scenes, plus the noise web pages have: links,
emoji, boilerplate, fragments, repeated and near-repeated sentences) with
images that this script draws. The images are written the way img2dataset
leaves a download (webdataset tars with KEY.jpg and KEY.json holding the
URL), so `rsyn embed --images OUT_DIR/images` finds them by URL, as it would
after a real download. A few images are too small or too elongated for the
paper's size rule, some have no known size, and a few were "never
downloaded".

Writes OUT_DIR/obelics/docs-0000.parquet (several row groups),
OUT_DIR/mmc4/docs.jsonl, OUT_DIR/images/00000.tar ... . Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
from pathlib import Path

SUBJECTS = [
    "A young woman",
    "Two children",
    "The old fisherman",
    "A brown dog",
    "Our guide",
    "The chef",
    "A cyclist",
    "Three students",
    "The farmer",
    "A street musician",
    "My grandmother",
    "The volunteers",
    "A small boy",
    "The photographer",
    "Two hikers",
    "The baker",
    "A tired runner",
    "The team captain",
    "An elderly couple",
    "The gardener",
    "A black cat",
    "The pilot",
    "Local artists",
    "A tall man",
]
VERBS = [
    "is carrying",
    "carried",
    "is painting",
    "painted",
    "is feeding",
    "fed",
    "repaired",
    "is repairing",
    "photographed",
    "climbed",
    "is climbing",
    "cleaned",
    "is selling",
    "sold",
    "built",
    "is building",
    "pushed",
    "is pulling",
    "opened",
    "is holding",
    "threw",
    "caught",
    "is riding",
    "rode",
    "decorated",
]
OBJECTS = [
    "a wooden boat",
    "the narrow bridge",
    "a basket of apples",
    "an old bicycle",
    "the red door",
    "a heavy box",
    "a kite",
    "the fence",
    "a loaf of bread",
    "the garden wall",
    "a blue umbrella",
    "a pile of books",
    "the wooden table",
    "a stone wall",
    "a bunch of flowers",
    "the broken window",
    "a paper lantern",
    "a small sailboat",
    "the market stall",
    "a big drum",
    "the yellow tent",
]
PLACES = [
    "near the harbour",
    "in the morning market",
    "under a cloudy sky",
    "beside the old church",
    "on the busy street",
    "at the edge of the forest",
    "in the village square",
    "along the river bank",
    "on a snowy hill",
    "behind the train station",
    "in the crowded plaza",
    "at the end of the pier",
]
EXTRAS = [
    "while tourists watched from the pier",
    "before the rain started",
    "as the sun went down",
    "after a long day of work",
    "while a dog barked nearby",
    "during the summer festival",
    "as children laughed in the background",
    "while the music played",
]
STATIVE = [
    "The weather was nice.",
    "It is a lovely place.",
    "This recipe is my favourite.",
    "The museum is open every day.",
    "Prices are subject to change.",
]
NOISE = [
    "Click here.",
    "Read more",
    "Share this:",
    "All rights reserved.",
    "Posted in Travel",
    "Visit https://shop.example.com/sale for the full collection of photos and prints.",
    "Follow us on www.instagram.com/example to see more pictures of the harbour.",
    "What a great day at the beach with all of my friends 😀 and family!",
    "We loved every minute of the parade in the old town 🎉 this year.",
]
COLORS = [
    (200, 40, 40),
    (40, 160, 60),
    (40, 80, 200),
    (230, 200, 40),
    (120, 60, 160),
    (240, 140, 30),
    (30, 170, 170),
    (90, 90, 90),
    (250, 250, 250),
    (20, 20, 20),
]


def scene_sentence(rng: random.Random) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
    if rng.random() < 0.5:
        s += f" {rng.choice(EXTRAS)}"
    return s + "."


def paragraph(rng: random.Random, shared: list[str]) -> str:
    sentences = []
    for _ in range(rng.randint(2, 5)):
        r = rng.random()
        if r < 0.62:
            sentences.append(scene_sentence(rng))
        elif r < 0.72 and shared:
            base = rng.choice(shared)  # the same sentence on many pages, sometimes lightly edited
            sentences.append(base if rng.random() < 0.6 else base.replace(".", " today.", 1))
        elif r < 0.82:
            sentences.append(rng.choice(STATIVE))
        elif r < 0.92:
            sentences.append(rng.choice(NOISE))
        else:
            long = " ".join(scene_sentence(rng).rstrip(".") for _ in range(7))
            sentences.append(long + ".")  # a run-on sentence over 81 words
    return " ".join(sentences)


def draw_image(rng: random.Random, width: int, height: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), rng.choice(COLORS))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 8)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(5, max(6, width // 2)), y0 + rng.randint(5, max(6, height // 2))
        shape = rng.choice(["ellipse", "rectangle", "line"])
        color = rng.choice(COLORS)
        if shape == "line":
            draw.line([x0, y0, x1, y1], fill=color, width=rng.randint(1, 6))
        else:
            getattr(draw, shape)([x0, y0, x1, y1], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def image_size(rng: random.Random) -> tuple[int, int]:
    r = rng.random()
    if r < 0.06:
        return rng.randint(40, 99), rng.randint(40, 99)  # too small
    if r < 0.11:
        return rng.randint(620, 900), rng.randint(120, 180)  # banner: w/h > 3
    return rng.randint(160, 512), rng.randint(160, 512)


class ImageFolder:
    """An img2dataset-style output folder: tars of KEY.jpg + KEY.json (url, status, size)."""

    def __init__(self, root: Path, per_tar: int = 200):
        self.root = root
        self.per_tar = per_tar
        self.count = 0
        self.tar: tarfile.TarFile | None = None
        root.mkdir(parents=True, exist_ok=True)

    def add(self, url: str, jpeg: bytes, width: int, height: int, caption: str) -> None:
        shard, index = divmod(self.count, self.per_tar)
        if index == 0:
            self.close()
            self.tar = tarfile.open(self.root / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT)
        key = f"{shard:05d}{index:04d}"
        meta = {
            "url": url,
            "key": key,
            "status": "success",
            "caption": caption,
            "width": width,
            "height": height,
            "original_width": width,
            "original_height": height,
        }
        for suffix, data in ((".jpg", jpeg), (".txt", caption.encode()), (".json", json.dumps(meta).encode())):
            info = tarfile.TarInfo(key + suffix)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def make_document(rng: random.Random, doc_no: int, shared: list[str], images: ImageFolder) -> dict:
    page = f"https://www.example-travel-blog.org/{doc_no // 50}/post-{doc_no}.html"
    nodes = []
    for i in range(rng.randint(2, 5)):
        nodes.append(("text", "\n\n".join(paragraph(rng, shared) for _ in range(rng.randint(1, 3)))))
        for _ in range(rng.choice([1, 1, 1, 2])):
            nodes.append(("image", i))
    if rng.random() < 0.3:
        nodes.append(("text", "END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"))
    record = {"page": page, "nodes": []}
    for kind, value in nodes:
        if kind == "text":
            record["nodes"].append({"text": value})
            continue
        n_img = sum(1 for x in record["nodes"] if "url" in x)
        url = f"https://img.example-travel-blog.org/{doc_no}/photo-{n_img}.jpg"
        width, height = image_size(rng)
        alt = scene_sentence(rng).rstrip(".") if rng.random() < 0.7 else ""
        if rng.random() < 0.95:  # the rest were "never downloaded"
            images.add(url, draw_image(rng, width, height), width, height, alt)
        known = rng.random() < 0.8  # some pages do not say how big their images are
        record["nodes"].append(
            {"url": url, "width": width if known else None, "height": height if known else None, "alt": alt}
        )
        if rng.random() < 0.05:  # the same image twice on one page
            record["nodes"].append(dict(record["nodes"][-1]))
    return record


def to_obelics(doc: dict) -> dict:
    images, texts, metadata = [], [], []
    for node in doc["nodes"]:
        if "text" in node:
            images.append(None)
            texts.append(node["text"])
            metadata.append(None)
        else:
            images.append(node["url"])
            texts.append(None)
            meta = {"document_url": doc["page"], "src": node["url"], "alt_text": node["alt"]}
            if node["width"] is not None:
                meta.update(original_width=node["width"], original_height=node["height"])
            metadata.append(meta)
    general = {"url": doc["page"], "warc_filename": "example.warc.gz"}
    return {"images": images, "texts": texts, "metadata": json.dumps(metadata), "general_metadata": json.dumps(general)}


def to_mmc4(doc: dict, rng: random.Random) -> dict:
    text_list, image_info = [], []
    for node in doc["nodes"]:
        if "text" in node:
            text_list.extend(p for p in node["text"].split("\n\n") if "END_OF_DOCUMENT" not in p)
        else:
            image_info.append(
                {
                    "image_name": node["url"].rsplit("/", 1)[-1],
                    "raw_url": node["url"],
                    "matched_text_index": max(0, len(text_list) - 1),
                    "matched_sim": round(rng.uniform(0.15, 0.35), 4),
                }
            )
    return {
        "url": doc["page"],
        "text_list": text_list,
        "image_info": image_info,
        "similarity_matrix": [],
        "could_have_url_duplicate": 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--docs", type=int, default=300, help="OBELICS-format documents")
    ap.add_argument("--mmc4-docs", type=int, default=20, help="MMC4-format documents")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--row-group", type=int, default=50)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(args.seed)
    shared = [scene_sentence(rng) for _ in range(12)]
    images = ImageFolder(args.out / "images")
    docs = [make_document(rng, i, shared, images) for i in range(args.docs + args.mmc4_docs)]
    images.close()

    (args.out / "obelics").mkdir(parents=True, exist_ok=True)
    rows = [to_obelics(d) for d in docs[: args.docs]]
    schema = pa.schema(
        [
            ("images", pa.list_(pa.string())),
            ("texts", pa.list_(pa.string())),
            ("metadata", pa.string()),
            ("general_metadata", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = args.out / "obelics" / ".docs-0000.parquet.tmp"
    pq.write_table(table, tmp, row_group_size=args.row_group)
    tmp.replace(args.out / "obelics" / "docs-0000.parquet")

    (args.out / "mmc4").mkdir(parents=True, exist_ok=True)
    tmp = args.out / "mmc4" / ".docs.jsonl.tmp"
    with open(tmp, "w") as fh:
        for doc in docs[args.docs :]:
            fh.write(json.dumps(to_mmc4(doc, rng)) + "\n")
    tmp.replace(args.out / "mmc4" / "docs.jsonl")
    print(f"make_corpus: {args.docs} OBELICS + {args.mmc4_docs} MMC4 documents, {images.count} images in {args.out}")


if __name__ == "__main__":
    main()
