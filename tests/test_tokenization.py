import subprocess
import sys

from mmfusion.training.tokenization import train_wordpiece_tokenizer

TEXTS = ["its their character not their color that matters", "putting bows on your pet", "the pet sleeps"] * 3


def test_tokenizer_adds_cls_and_sep_and_spells_out_unseen_words():
    tokenizer = train_wordpiece_tokenizer(TEXTS, vocab_size=60)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("their pets")["input_ids"])
    assert tokens == ["[CLS]", "their", "pet", "##s", "[SEP]"]  # "pets" was never seen: spelled from pieces


def test_same_texts_give_the_same_vocabulary_in_every_process():
    code = (
        "from mmfusion.training.tokenization import train_wordpiece_tokenizer as t; import json;"
        f"print(json.dumps(t({TEXTS!r}, vocab_size=60).get_vocab(), sort_keys=True))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1
