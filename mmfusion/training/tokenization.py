"""A BERT WordPiece tokenizer with a vocabulary built from the captions at hand.

Randomly initialised text towers (the demo run, tests, benchmarks) need a vocabulary but no Hub download. The
vocabulary is built deterministically: every character (alone and as a `##` continuation, so unseen words are spelled
out rather than mapped to [UNK]) plus the most frequent words, ties broken alphabetically. (`tokenizers`' own
WordPiece trainer gives a different vocabulary in every process, which would make runs irreproducible and resumed
runs see different token ids.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocabulary(texts: Iterable[str], vocab_size: int) -> list[str]:
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    characters = sorted({character for word in counts for character in word})
    vocabulary = SPECIAL_TOKENS + characters + [f"##{character}" for character in characters]
    known = set(vocabulary)
    by_frequency = sorted((word for word in counts if word not in known), key=lambda word: (-counts[word], word))
    return vocabulary + by_frequency[: max(0, vocab_size - len(vocabulary))]


def train_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """An uncased WordPiece tokenizer that adds [CLS] ... [SEP] like `bert-base-uncased`; same texts, same vocab."""
    vocabulary = build_vocabulary(texts, vocab_size)
    tokenizer = Tokenizer(
        models.WordPiece({token: index for index, token in enumerate(vocabulary)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = vocabulary.index("[CLS]"), vocabulary.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
