"""Tokenizer backends against outside references: transformers (GGUF, tokenizer.json) and sentencepiece."""

import json
import random
import re

import pytest

from puyu_jax.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_gguf

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "书生·浦语大模型全链路开源体系",
    "混合 text 和中文，还有标点！",
    "👋🏽🇨🇳 emoji 🤖✨",
    "def f(x):\n    return x ** 2  # square\n",
    "12345 67890 3.14159 1,000,000",
    "   leading spaces, trailing   \n\n\n\t tabs\t\t and  double  spaces  ",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they've done it; we'll see what's 'quoted'.",
    "",
]


@pytest.fixture(scope="module")
def gguf_path(smollm2_gguf) -> str:
    return str(smollm2_gguf)


@pytest.fixture(scope="module")
def gguf_tok(gguf_path) -> Tokenizer:
    return load_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def hf_gguf_tok(smollm2_hf_tokenizer):
    return smollm2_hf_tokenizer


# ----------------------------------------------------------------------------------------------- GGUF


def test_gguf_metadata(gguf_tok):
    t = gguf_tok
    assert t.backend == "hf"
    assert t.vocab_size == 49152
    assert (t.bos_id, t.eos_id, t.pad_id, t.unk_id) == (1, 2, 2, 0)
    assert t.add_bos is False
    assert t.eos_ids == (2,)
    assert t.special_tokens["<|im_start|>"] == 1 and t.special_tokens["<|im_end|>"] == 2
    assert t.chat_template and "<|im_start|>" in t.chat_template
    assert t.id_to_token(1) == "<|im_start|>" and t.token_to_id("<|im_end|>") == 2
    with pytest.raises(IndexError):
        t.id_to_token(10**6)


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_matches_transformers(gguf_tok, hf_gguf_tok, text):
    ids = gguf_tok.encode(text)
    assert ids == hf_gguf_tok.encode(text, add_special_tokens=False)
    assert gguf_tok.decode(ids) == text == hf_gguf_tok.decode(ids)
    assert gguf_tok.decode(ids, skip_special=True) == hf_gguf_tok.decode(ids, skip_special_tokens=True)


def test_gguf_special_tokens(gguf_tok):
    t = gguf_tok
    assert t.encode("<|im_start|>") == [1]
    plain = t.encode("<|im_start|>", allow_special=False)
    assert len(plain) > 1 and 1 not in plain
    assert t.decode(plain) == "<|im_start|>"
    assert t.encode("hi", add_bos=True)[0] == 1
    # digits are split one by one (pre "smollm")
    assert len(t.encode("2024")) == 4


def test_gguf_save_roundtrip(gguf_tok, tmp_path):
    gguf_tok.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    back = load_tokenizer(tmp_path)
    _same(gguf_tok, back)


# ----------------------------------------------------------------------------------------------- sentencepiece


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    en = "the model reads text and writes answers about data science code training tokens quickly".split()
    zh = list("书生浦语大模型全链路开源体系上海人工智能实验室你好世界训练数据中文")
    lines = []
    for _ in range(n):
        words = [rng.choice(en) for _ in range(rng.randint(3, 10))]
        han = "".join(rng.choice(zh) for _ in range(rng.randint(2, 8)))
        lines.append(" ".join(words) + f" {han} {rng.randint(0, 999)}, <|im_start|> {rng.choice(en)}.")
    return lines


SPM_SPECIAL = ["<|im_start|>", "<|im_end|>"]  # user-defined: sentencepiece itself matches them in text
SPM_CONTROL = ["<|action_start|>"]  # control: only matched by our tokenizer


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    import sentencepiece as spm
    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(_corpus()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"),
        model_prefix=str(d / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=SPM_SPECIAL,
        control_symbols=SPM_CONTROL,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    (d / "corpus.txt").unlink()
    (d / "tokenizer.vocab").unlink()
    return d


@pytest.fixture(scope="module")
def spm_ref(spm_dir):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def spm_tok(spm_dir) -> Tokenizer:
    return load_tokenizer(spm_dir)


def test_spm_metadata(spm_tok, spm_ref):
    t = spm_tok
    assert t.backend == "sentencepiece"
    assert t.vocab_size == spm_ref.get_piece_size()
    assert (t.bos_id, t.eos_id, t.unk_id, t.pad_id) == (1, 2, 0, None)
    assert t.add_bos is True
    assert set(SPM_SPECIAL + SPM_CONTROL + ["<s>", "</s>"]) <= set(t.special_tokens)


@pytest.mark.parametrize("text", TEXTS)
def test_spm_matches_sentencepiece(spm_tok, spm_ref, text):
    ids = spm_tok.encode(text, add_bos=False)
    ref = spm_ref.encode(text)
    if text.startswith("<|"):
        # sentencepiece puts a lone dummy-prefix "▁" before a leading special token; like transformers'
        # (non-legacy) Llama tokenizer we add the prefix only in front of text.
        assert ref[0] == spm_ref.piece_to_id("▁")
        ref = ref[1:]
    assert ids == ref
    assert spm_tok.decode(ids) == text == spm_ref.decode(ids)
    with_bos = spm_tok.encode(text)
    assert with_bos == [1, *ids]
    assert spm_tok.decode(with_bos, skip_special=True) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")


def test_spm_special_tokens(spm_tok, spm_ref):
    t = spm_tok
    act = spm_ref.piece_to_id("<|action_start|>")
    text = "<s>[INST] hi<|action_start|>call x<|im_end|> done"
    ids = t.encode(text, add_bos=False)
    assert ids.count(act) == 1 and ids.count(1) == 1 and ids[0] == 1
    assert t.decode(ids) == text
    assert t.decode(ids, skip_special=True) == "[INST] hicall x done"
    assert t.encode("<|action_start|>", add_bos=False, allow_special=False) == spm_ref.encode("<|action_start|>")
    assert t.encode("x<|im_start|>user", add_bos=False) == spm_ref.encode("x<|im_start|>user")
    assert t.encode("<|im_start|>user", add_bos=False) == spm_ref.encode("<|im_start|>user")[1:]
    # a BOS starts a new sequence: the dummy prefix comes back after it (Llama-2 chat: "</s><s>[INST]")
    two = t.encode("<s>[INST] a</s><s>[INST] b", add_bos=False)
    bos = [i for i, x in enumerate(two) if x == 1]
    assert two[bos[0] + 1] == two[bos[1] + 1] == spm_ref.encode("[INST]")[0]
    assert t.decode(two) == "<s>[INST] a</s><s>[INST] b"


def test_spm_save_roundtrip(spm_tok, tmp_path):
    spm_tok.chat_template = "{{ messages[0]['content'] }}\n"
    try:
        spm_tok.save(tmp_path)
        back = load_tokenizer(tmp_path)
        _same(spm_tok, back)
        assert back.backend == "sentencepiece"
    finally:
        spm_tok.chat_template = None


@pytest.fixture(scope="module")
def spm_gguf(spm_dir):
    """A `tokenizer.ggml.model == "llama"` GGUF (metadata only) written from the sentencepiece model."""
    import gguf as gguf
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString((spm_dir / "tokenizer.model").read_bytes())
    path = spm_dir / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in m.pieces])
    w.add_token_scores([p.score for p in m.pieces])
    w.add_token_types([p.type for p in m.pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{{ messages[0]['content'] }}<|im_end|>")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_llama_vocab_matches_sentencepiece(spm_gguf, spm_ref):
    """The sentencepiece-style GGUF vocabulary encodes like sentencepiece (and llama.cpp around specials)."""
    path = spm_gguf
    t = tokenizer_from_gguf(path)
    assert t.add_bos and (t.bos_id, t.eos_id, t.unk_id) == (1, 2, 0)
    for text in TEXTS:
        ids = t.encode(text, add_bos=False)
        if "<|" not in text:  # llama.cpp puts the "▁" prefix after every special token, sentencepiece doesn't
            assert ids == spm_ref.encode(text), text
        assert t.decode(ids) == text
    assert t.encode("a<|im_end|>b", add_bos=False) == spm_ref.encode("a<|im_end|> b")
    assert t.encode("<|action_start|>", add_bos=False) == [spm_ref.piece_to_id("<|action_start|>")]
    assert t.eos_ids == (2, spm_ref.piece_to_id("<|im_end|>"))


def test_gguf_from_reader(spm_gguf, tmp_path):
    """A `gguf.GGUFReader` gives the same tokenizer as our own header reader, and save() keeps it."""
    import gguf

    a = tokenizer_from_gguf(gguf.GGUFReader(str(spm_gguf)))
    b = load_tokenizer(spm_gguf)
    _same(a, b)
    b.save(tmp_path)
    _same(b, load_tokenizer(tmp_path))


# ----------------------------------------------------------------------------------------------- tokenizer.json


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    d = tmp_path_factory.mktemp("hf")
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(), trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tk.save(str(d / "tokenizer.json"))
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    cfg = {"eos_token": "</s>", "chat_template": template}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3]}))
    return d


@pytest.fixture(scope="module")
def hf_tok(hf_dir) -> Tokenizer:
    return load_tokenizer(hf_dir)


def test_hf_metadata(hf_tok):
    t = hf_tok
    assert t.backend == "hf"
    assert (t.bos_id, t.eos_id) == (0, 1)
    assert t.add_bos is True  # found in the post-processor
    assert t.eos_ids == (1, 3)
    assert t.special_tokens == {"<s>": 0, "</s>": 1, "<|im_start|>": 2, "<|im_end|>": 3}


@pytest.mark.parametrize("text", TEXTS)
def test_hf_matches_transformers(hf_tok, hf_dir, text):
    import transformers as transformers
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    ids = hf_tok.encode(text)
    assert ids == ref.encode(text)
    assert ids[0] == 0
    assert hf_tok.decode(ids[1:]) == text
    assert hf_tok.decode(ids, skip_special=True) == re.sub(r"<\|im_(start|end)\|>", "", text)
    assert hf_tok.decode(ids) == ref.decode(ids)


def test_hf_special_tokens(hf_tok):
    t = hf_tok
    ids = t.encode("<|im_start|>x<|im_end|>", add_bos=False)
    assert ids[0] == 2 and ids[-1] == 3 and t.encode("x", add_bos=False) == ids[1:-1]
    ids = t.encode("a<|im_start|>b", add_bos=False)
    assert 2 in ids and t.decode(ids) == "a<|im_start|>b"
    plain = t.encode("<|im_start|>", add_bos=False, allow_special=False)
    assert 2 not in plain and t.decode(plain) == "<|im_start|>"
    assert t.encode("<|im_start|>", add_bos=False) == [2]


def test_hf_save_roundtrip(hf_tok, tmp_path):
    hf_tok.save(tmp_path)
    _same(hf_tok, load_tokenizer(tmp_path))


def _same(a: Tokenizer, b: Tokenizer) -> None:
    for attr in ("vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "eos_ids", "add_bos", "chat_template"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a.special_tokens == b.special_tokens
    for text in TEXTS:
        assert a.encode(text) == b.encode(text)
        assert b.decode(b.encode(text, add_bos=False)) == text
