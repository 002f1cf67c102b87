"""Small synthetic folders in the layouts of the meme benchmarks, as downloaded, with the quirks of the real releases.

Each `make_<layout>(root)` writes tiny real images (PIL) and the label files, and returns `root`. `BAD_ROWS` says,
per layout, how to spoil one row three ways (an unknown label, a missing image, a malformed line) and which file,
line and id the error must name.
"""

import json
import os

from data_files import write_image, write_jsonl

MAMI_HEADER = "file_name\tmisogynous\tshaming\tstereotype\tobjectification\tviolence\tText Transcription"


def _write(path, text, newline="\n", bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write(text.replace("\n", newline))


def make_mami(root):
    root = str(root)
    for index, name in enumerate(["1.jpg", "2.jpg", "3.jpg"]):
        write_image(os.path.join(root, "TRAINING", name), color=(40 * index, 10, 10))
    for name in ["15000.jpg", "15001.jpg"]:
        write_image(os.path.join(root, "test", name))
    # UTF-8 with BOM, tab-separated, quotes inside the text not escaped
    _write(
        os.path.join(root, "TRAINING", "training.csv"),
        f"{MAMI_HEADER}\n"
        '1.jpg\t1\t1\t0\t1\t0\tshe said "make me a sandwich\n'
        "2.jpg\t0\t0\t0\t0\t0\tjust a cat\n"
        '3.jpg\t1\t0\t1\t0\t1\t"women" drivers"\n',
        bom=True,
    )
    _write(os.path.join(root, "test", "Test.csv"), "file_name\tText Transcription\n15000.jpg\tfoo\n15001.jpg\tbar\n")
    _write(os.path.join(root, "test", "test_labels.txt"), "15000.jpg\t1\t0\t0\t1\t0\n15001.jpg\t0\t0\t0\t0\t0\n")
    return root


MAMI_WORDS = ("kitchen", "cliche", "body", "fist")  # one cue word per sub-type, in MAMI_HEADER's order


def make_mami_multi_label(root, num_train=32, num_test=16):
    """A MAMI folder large enough to train sub-task B on: row i has sub-type j when bit j of i is set (every label
    present and absent in each split, some rows with none); the image colour and a cue word per sub-type carry it."""
    root = str(root)

    def rows(folder, start, count):
        lines = []
        for i in range(start, start + count):
            bits = [(i >> j) & 1 for j in range(4)]
            name = f"{i}.jpg"
            write_image(
                os.path.join(root, folder, name), color=(60 * bits[0] + 40 * bits[1], 60 * bits[2], 60 * bits[3])
            )
            words = " ".join(word for word, bit in zip(MAMI_WORDS, bits) if bit) or "nothing"
            lines.append((name, int(any(bits)), bits, f"meme {i} {words}"))
        return lines

    train = rows("TRAINING", 0, num_train)
    test = rows("test", num_train, num_test)
    body = "".join(f"{n}\t{m}\t" + "\t".join(map(str, b)) + f"\t{t}\n" for n, m, b, t in train)
    _write(os.path.join(root, "TRAINING", "training.csv"), f"{MAMI_HEADER}\n{body}", bom=True)
    _write(
        os.path.join(root, "test", "Test.csv"),
        "file_name\tText Transcription\n" + "".join(f"{n}\t{t}\n" for n, _, _, t in test),
    )
    _write(
        os.path.join(root, "test", "test_labels.txt"),
        "".join(f"{n}\t{m}\t" + "\t".join(map(str, b)) + "\n" for n, m, b, _ in test),
    )
    return root


HARMEME_TRAIN = [
    {"id": "covid_memes_1", "image": "covid_memes_1.png", "labels": ["not harmful"], "text": "stay home"},
    {"id": "covid_memes_2", "image": "covid_memes_2.png", "labels": ["somewhat harmful", "individual"], "text": "a"},
    {"id": "covid_memes_3", "image": "covid_memes_3.png", "labels": ["very harmful"], "text": "b"},  # no target
    {"id": "covid_memes_4", "image": "covid_memes_4.png", "labels": ["not harmful", "society"], "text": "c"},
    {"id": "covid_memes_5", "image": "covid_memes_5.png", "labels": ["", "community"], "text": "d"},  # empty harm
    {"id": "covid_memes_6", "image": "covid_memes_6.png", "labels": ["very harmful", "organization"], "text": "e"},
]


def make_harmeme(root, suffix=""):
    root = str(root)
    for index in range(1, 9):
        write_image(os.path.join(root, "images", f"covid_memes_{index}.png"), color=(index * 20, 0, 0))
    write_jsonl(os.path.join(root, f"train{suffix}.jsonl"), HARMEME_TRAIN)
    write_jsonl(
        os.path.join(root, f"val{suffix}.jsonl"),
        [
            {
                "id": "covid_memes_7",
                "image": "covid_memes_7.png",
                "labels": ["somewhat harmful", "society"],
                "text": "f",
            }
        ],
    )
    write_jsonl(
        os.path.join(root, f"test{suffix}.jsonl"),
        [{"id": "covid_memes_8", "image": "covid_memes_8.png", "labels": ["not harmful"], "text": "g"}],
    )
    return root


def make_memotion(root):
    root = str(root)
    # mixed extensions; image_5 is listed as .jpg but is a .png on disk
    for name in ["image_1.jpg", "image_2.png", "image_3.JPG", "image_4.jpeg", "image_5.png"]:
        write_image(os.path.join(root, "images", name))
    _write(
        os.path.join(root, "labels.csv"),
        ",image_name,text_ocr,text_corrected,humour,sarcasm,offensive,motivational,overall_sentiment\n"
        '0,image_1.jpg,OCR ONE,"corrected one, with a comma",hilarious,general,not_offensive,not_motivational,'
        "very_positive\n"
        "1,image_2.png,ocr only,,not_funny,not_sarcastic,slight,motivational,neutral\n"
        "2,image_3.JPG,x,three,funny,twisted_meaning,very_offensive,not_motivational,negative\n"
        "3,image_4.jpeg,y,four,very_funny,very_twisted,hateful_offensive,motivational,very_negative\n"
        "4,image_5.jpg,z,five,funny,general,slight,not_motivational,positive\n",
    )
    return root


def make_multioff(root):
    root = str(root)
    splits = {
        "Training": [("a.jpg.png", "first sentence", "offensive"), ("b.png", "second, quoted", "Non-offensiv")],
        "Validation": [("c.jpg.png", "third", "Non-offensiv")],
        "Testing": [("d.jpg.png", "fourth", "offensive")],
    }
    for name, rows in splits.items():
        lines = ["image_name,sentence,label"] + [f'{image},"{text}",{label}' for image, text, label in rows]
        _write(os.path.join(root, "Split Dataset", f"{name}_meme_dataset.csv"), "\n".join(lines) + "\n", "\r\n")
        for image, _, _ in rows:
            write_image(os.path.join(root, "Labelled Images", image))
    return root


MMHS_GT = {
    "1114679353714016256": {"tweet_text": "@user nigga foo https://t.co/x", "labels": [4, 1, 3], "labels_str": []},
    "1063020048816660480": {"tweet_text": "just a tweet", "labels": [0, 0, 1], "labels_str": []},
    "1108927368075374593": {"tweet_text": "tied", "labels": [0, 2], "labels_str": []},
    "1114558534635618305": {"tweet_text": "val tweet", "labels": [2, 2, 0], "labels_str": []},
    "1035252480215592966": {"tweet_text": "test tweet", "labels": [0, 0, 0], "labels_str": []},
}


def make_mmhs150k(root):
    root = str(root)
    with open(os.path.join(_mkdir(root), "MMHS150K_GT.json"), "w") as f:
        json.dump(MMHS_GT, f)
    ids = list(MMHS_GT)
    splits = {"train": ids[:3], "val": ids[3:4], "test": ids[4:]}
    for split, split_ids in splits.items():
        _write(os.path.join(root, "splits", f"{split}_ids.txt"), "".join(f"{i}\n" for i in split_ids))
    for tweet_id in ids:
        write_image(os.path.join(root, "img_resized", f"{tweet_id}.jpg"))
    _write(os.path.join(root, "img_txt", f"{ids[0]}.json"), json.dumps({"img_text": "TEXT IN THE IMAGE"}))
    return root


def make_pridemm(root):
    root = str(root)
    rows = [
        ("img_1.png", "love wins", "train", "0", "", "1", "0"),
        ("img_2.png", "None", "train", "1", "1.0", "2", "1"),  # a caption "None"; pandas wrote the target as float
        ("img_3.png", '"hate, with comma"', "train", "1", "3", "2", "0"),
        ("img_4.png", "val text", "val", "0", "", "0", "1"),
        ("img_5.png", "test text", "test", "1", "", "2", "0"),  # hateful without a target
    ]
    lines = ["name,text,split,hate,target,stance,humour"] + [",".join(row) for row in rows]
    _write(os.path.join(root, "PrideMM.csv"), "\n".join(lines) + "\n")
    for row in rows:
        write_image(os.path.join(root, "Images", row[0]))
    return root


def make_hateful_memes(root):
    """Phase 1 names, `img\\/` paths, an int id that lost its leading zeros, a test file without labels."""
    root = str(root)
    for name in ("01235.png", "00002.png"):
        write_image(os.path.join(root, "img", name))
    write_jsonl(os.path.join(root, "dev.jsonl"), ['{"id": 1235, "img": "img\\/01235.png", "label": 1, "text": "x"}'])
    write_jsonl(os.path.join(root, "test.jsonl"), [{"id": "00002", "img": "img/00002.png", "text": "y"}])
    return root


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    return path


MAKERS = {
    "hateful_memes": make_hateful_memes,
    "mami": make_mami,
    "harmeme": make_harmeme,
    "memotion": make_memotion,
    "multioff": make_multioff,
    "mmhs150k": make_mmhs150k,
    "pridemm": make_pridemm,
}

# layout: {spoilage: (file, old text, new text or None to delete the image file, line, id)}
BAD_ROWS = {
    "mami": {
        "unknown label": ("TRAINING/training.csv", "2.jpg\t0", "2.jpg\tyes", 3, "2.jpg"),
        "missing image": ("TRAINING/2.jpg", None, None, 3, "2.jpg"),
        "malformed line": ("TRAINING/training.csv", "2.jpg\t0\t0", "2.jpg\t0", 3, "2.jpg"),
    },
    "harmeme": {
        "unknown label": ("train.jsonl", "very harmful", "extremely harmful", 3, "covid_memes_3"),
        "missing image": ("images/covid_memes_3.png", None, None, 3, "covid_memes_3"),
        "malformed line": ("train.jsonl", '"covid_memes_3", ', '"covid_memes_3" ', 3, "covid_memes_3"),
    },
    "memotion": {
        "unknown label": ("labels.csv", "not_motivational,negative", "not_motivational,grumpy", 4, "image_3.JPG"),
        "missing image": ("images/image_3.JPG", None, None, 4, "image_3.JPG"),
        "malformed line": ("labels.csv", "2,image_3.JPG,x,", "2,image_3.JPG,", 4, "image_3.JPG"),
    },
    "multioff": {
        "unknown label": ("Split Dataset/Training_meme_dataset.csv", "Non-offensiv", "meh", 3, "b.png"),
        "missing image": ("Labelled Images/b.png", None, None, 3, "b.png"),
        "malformed line": (
            "Split Dataset/Training_meme_dataset.csv",
            '"second, quoted"',
            "second, quoted",
            3,
            "b.png",
        ),
    },
    "mmhs150k": {
        "unknown label": ("MMHS150K_GT.json", "[0, 0, 1]", "[0, 0, 7]", 2, "1063020048816660480"),
        "missing image": ("img_resized/1063020048816660480.jpg", None, None, 2, "1063020048816660480"),
        "malformed line": ("img_txt/1114679353714016256.json", '{"img_text"', '{img_text"', 1, "1114679353714016256"),
    },
    "pridemm": {
        "unknown label": ("PrideMM.csv", "img_4.png,val text,val,0", "img_4.png,val text,val,maybe", 5, "img_4.png"),
        "missing image": ("Images/img_4.png", None, None, 5, "img_4.png"),
        "malformed line": ("PrideMM.csv", "img_4.png,val text,val,0,", "img_4.png,val text,val,0,,,,", 5, "img_4.png"),
    },
}
# Where the error is reported, when it is not the file that was spoiled (MMHS150K: the split's id file).
BAD_ROW_FILES = {
    ("mmhs150k", "unknown label"): "splits/train_ids.txt",
    ("mmhs150k", "missing image"): "splits/train_ids.txt",
    ("mmhs150k", "malformed line"): "splits/train_ids.txt",
    ("mami", "missing image"): "TRAINING/training.csv",
    ("harmeme", "missing image"): "train.jsonl",
    ("memotion", "missing image"): "labels.csv",
    ("multioff", "missing image"): "Split Dataset/Training_meme_dataset.csv",
    ("pridemm", "missing image"): "PrideMM.csv",
}


def spoil(root, layout, spoilage):
    """Apply one of `BAD_ROWS[layout]` to the folder; return `(file the error names, line, id)`."""
    relative, old, new, line, row_id = BAD_ROWS[layout][spoilage]
    path = os.path.join(root, relative)
    if old is None:
        os.remove(path)
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
        assert old in text, (layout, spoilage)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text.replace(old, new, 1))
    reported = BAD_ROW_FILES.get((layout, spoilage), relative)
    return os.path.join(root, reported), line, row_id
