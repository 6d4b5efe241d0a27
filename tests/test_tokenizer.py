"""Tokenizer: lossless on every byte string, golf byte counting, training (format_spec/tokenizer.md)."""

import io
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmzip import tokenizer
from lmzip.errors import FormatError, TokenizerError
from lmzip.tokenizer import (
    Tokenizer,
    golf_byte_counts,
    golf_bytes_lut,
    sample_lines,
    train_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
GOLF_MODEL = ROOT.parent / "shared" / "golf" / "fineweb_8192_bpe.model"
LEE = ROOT.parent / "shared" / "corpora" / "lee_news.txt.zst"


@pytest.fixture(scope="session")
def small_tok():
    if not LEE.exists():
        pytest.skip("lee_news corpus not available")
    return train_tokenizer([LEE], 400, sample_bytes=200_000)


@pytest.fixture(scope="session")
def golf_tok():
    if not GOLF_MODEL.exists():
        pytest.skip("golf tokenizer not available")
    return Tokenizer.load(GOLF_MODEL)


@pytest.fixture(scope="session")
def nl_tok(tmp_path_factory):
    """A model with a newline piece: exercises the encoder path that keeps newlines in text."""
    sink = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b c\nd e", "hello world\n", "the cat sat"] * 50),
        model_writer=sink,
        model_type="bpe",
        vocab_size=300,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=["\n", "\n\n"],
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return Tokenizer.from_bytes(sink.getvalue())


@pytest.fixture(params=["small", "golf", "nl"])
def tok(request):
    return request.getfixturevalue(f"{request.param}_tok")


EDGE_CASES = [
    b"",
    b"a",
    b" ",
    b"\x00",
    b"\x00\x00abc\x00",
    b"\xff",
    b"\x80",
    b"\xed\xa0\x80",  # UTF-8 form of a surrogate: invalid
    b"\xed\xa0\x80\xed\xb0\x80",  # surrogate pair as CESU-8
    b"\xc0\xaf\xe0\x80\xaf\xf8\x88\x80\x80\xaf",  # overlong forms
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x82",  # truncated sequence
    b"\r",
    b"\n",
    b"\r\n",
    b"a\r\nb\rc\nd\n\n\n",
    b" lead",
    b"trail ",
    b"  two  spaces  between   ",
    b"\t\ttabs\t \t",
    b"\x0b\x0c\x1c\x1d\x1e\x85",
    "\u00a0nbsp\u3000ideographic\u2028line\u2029para".encode(),
    "\u2581".encode(),
    "a\u2581b \u2581\u2581 \u2581c".encode(),
    "\ufb01 \uff46\uff55\uff4c\uff4c \u2122 \u00bd \u2460 \u212b A\u030a \u1e9b\u0323".encode(),
    "caf\u00e9 cafe\u0301 \uac00 \u1100\u1161".encode(),
    "\U0001f600\U0001f469\u200d\U0001f4bb \U0001f1fa\U0001f1f8 \ufe0f".encode(),
    "\U0001d54f \U00020000 \U000e0001 \U000f0000 \U0010ffff \uffff \ufffd \ufeff".encode(),
    b"<s></s><unk><pad><0x41>",
    bytes(range(256)),
    bytes(range(256))[::-1] * 3,
    b"hello world, this is text.\n",
    b"word " * 5000 + b"x" * 20000,  # longer than one sentencepiece chunk, with and without spaces
]


@pytest.mark.parametrize("data", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases_round_trip(tok, data):
    ids = tok.encode(data)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == data
    assert not tok.is_special[ids].any()


text_pieces = st.sampled_from(
    [" ", "  ", "\t", "\n", "\r\n", "\r", "\u2581", "\u3000", "\ufb01", "\uff46", "\x00", "\u00e9"]
)
any_text = st.text(st.characters(codec=None, exclude_categories=()))
mixed = st.lists(
    st.one_of(
        st.binary(max_size=20),
        any_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
        text_pieces.map(str.encode),
        st.text(alphabet="abcdefghij .,").map(str.encode),
    ),
    max_size=12,
).map(b"".join)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(st.binary(), mixed, any_text.map(lambda s: s.encode("utf-8", "surrogatepass")))
)
def test_round_trip_property(tok, data):
    ids = tok.encode(data)
    assert tok.decode(ids) == data
    assert not tok.is_special[ids].any()
    # Golf byte rule on a lossless encoding: every byte is counted once, except the leading space
    # of the first token after BOS.
    if ids.size:
        counts = golf_byte_counts(tok, np.concatenate([[tok.bos_id], ids]))
        assert counts[0] == 0
        lead = tok.pieces[ids[0]].startswith("\u2581") and not tok.is_byte[ids[0]]
        assert counts.sum() == len(data) - lead


@pytest.fixture(scope="session")
def golf_per_run(golf_tok):
    """The golf tokenizer with the encoder path for models that have newline pieces."""
    tok = Tokenizer.from_bytes(golf_tok.model_bytes)
    tok._raw, tok._nl_sep = tokenizer._RAW, False
    return tok


@settings(max_examples=100, deadline=None)
@given(data=mixed)
def test_newline_split_gives_sentencepiece_ids(golf_tok, golf_per_run, data):
    """Newlines as byte tokens + one joined call == each text run through sentencepiece."""
    assert golf_tok.encode(data).tolist() == golf_per_run.encode(data).tolist()


def test_random_10mb(small_tok, golf_tok):
    data = np.random.default_rng(1).bytes(10_000_000)
    for tok in (small_tok, golf_tok):
        ids = tok.encode(data)
        assert tok.decode(ids) == data


def test_real_text_uses_the_vocabulary(small_tok):
    text = zstandard.ZstdDecompressor().decompress(LEE.read_bytes(), max_output_size=1 << 30)
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert len(text) / len(ids) > 1.5  # not byte by byte (only ~140 merges at vocab 400)
    assert small_tok.is_byte[ids].mean() < 0.02


def test_encode_matches_sentencepiece_on_plain_text(small_tok, golf_tok):
    """Where sentencepiece is already lossless, the ids are its own (the model sees usual input)."""
    text = "The quick brown fox jumps over the lazy dog. It was 1234 years ago, he said."
    for tok in (small_tok, golf_tok):
        sp = spm.SentencePieceProcessor(model_proto=tok.model_bytes)
        assert tok.encode(text.encode()).tolist() == sp.encode(text)


def test_fallback_when_sentencepiece_does_not_round_trip(golf_tok):
    """Force the encoder to use the normalizing golf processor: the checks must catch it."""
    tok = Tokenizer.from_bytes(golf_tok.model_bytes)
    tok._enc = spm.SentencePieceProcessor(model_proto=tok.model_bytes)  # nmt_nfkc, strips spaces
    for data in EDGE_CASES + ["ok line\n \ufb01 two  spaces\n\tx\n".encode()]:
        ids = tok.encode(data)
        assert tok.decode(ids) == data
        assert not tok.is_special[ids].any()
    ids = tok.encode("plain words then \ufb01x".encode())
    assert not tok.is_byte[ids[0]]  # the word that round-trips still uses the vocabulary


def test_token_bytes_golf(golf_tok):
    tok = golf_tok
    assert tok.vocab_size == 8192 and tok.bos_id == 1 and tok.eos_id == 2 and tok.unk_id == 3
    assert tok.token_bytes[:4] == [b"", b"", b"", b""]
    assert tok.token_bytes[4:260] == [bytes([b]) for b in range(256)]
    assert tok.byte_ids.tolist() == list(range(4, 260))
    the = tok.pieces.index("\u2581the")
    assert tok.token_bytes[the] == b" the"
    assert tok.decode([1, the, 2, the]) == b" the the"


def test_model_bytes_round_trip(small_tok, tmp_path):
    again = Tokenizer.from_bytes(small_tok.model_bytes)
    assert again.model_bytes == small_tok.model_bytes
    assert again.token_bytes == small_tok.token_bytes
    small_tok.save(tmp_path / "m.model")
    assert Tokenizer.load(tmp_path / "m.model").model_bytes == small_tok.model_bytes


def test_decode_rejects_bad_ids(small_tok):
    with pytest.raises(FormatError):
        small_tok.decode([small_tok.vocab_size])
    with pytest.raises(FormatError):
        small_tok.decode([-1])
    assert small_tok.decode(np.zeros(0, dtype=np.int64)) == b""


def test_golf_byte_counts_hand_checked(golf_tok):
    tok = golf_tok
    p = tok.pieces.index
    ids = np.array(
        [p("\u2581the"), p("\u2581cat"), 1, p("\u2581sat"), 14, p("\u2581on"), 2, p("\u2581a")]
        + [p("a"), 3, 0, 4 + 0xC3]
    )
    # "▁the" first: 3; "▁cat": 4; BOS: 0; "▁sat" after BOS: 3; <0x0A>: 1; "▁on" after a byte
    # token: 3; EOS: 0; "▁a" after EOS: 1; "a": 1; unk, pad: 0; a byte token: 1.
    assert golf_byte_counts(tok, ids).tolist() == [3, 4, 0, 3, 1, 3, 0, 1, 1, 0, 0, 1]
    assert golf_byte_counts(tok, ids[:0]).tolist() == []


def test_golf_lut_matches_reference_rule(golf_tok):
    """The rule of openai/parameter-golf train_gpt.py build_sentencepiece_luts + eval_val."""
    sp = spm.SentencePieceProcessor(model_file=str(GOLF_MODEL))
    n = sp.vocab_size()
    base_ref = np.zeros(n, dtype=np.int16)
    lead_ref = np.zeros(n, dtype=np.bool_)
    boundary_ref = np.ones(n, dtype=np.bool_)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary_ref[i] = False
        if sp.is_byte(i):
            base_ref[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            lead_ref[i] = True
            piece = piece[1:]
        base_ref[i] = len(piece.encode("utf-8"))
    base, lead, boundary = golf_bytes_lut(golf_tok)
    assert (
        (base == base_ref).all() and (lead == lead_ref).all() and (boundary == boundary_ref).all()
    )
    ids = np.random.default_rng(0).integers(0, n, 5000)
    ref = base_ref[ids[1:]] + (lead_ref[ids[1:]] & ~boundary_ref[ids[:-1]])
    assert (golf_byte_counts(golf_tok, ids)[1:] == ref).all()


def _train_plain(**kw) -> bytes:
    sink = io.BytesIO()
    args = {
        "sentence_iterator": iter(["hello world", "the cat sat on the mat"] * 20),
        "model_writer": sink,
        "model_type": "bpe",
        "vocab_size": 40,
        "hard_vocab_limit": False,
        "minloglevel": 2,
    }
    spm.SentencePieceTrainer.train(**(args | kw))
    return sink.getvalue()


def test_model_without_byte_fallback_is_rejected():
    with pytest.raises(TokenizerError, match="byte fallback"):
        Tokenizer.from_bytes(_train_plain())


def test_model_without_bos_is_rejected():
    with pytest.raises(TokenizerError, match="BOS"):
        Tokenizer.from_bytes(_train_plain(byte_fallback=True, bos_id=-1, vocab_size=300))


def test_garbage_is_rejected():
    with pytest.raises(TokenizerError):
        Tokenizer.from_bytes(b"\x0a\x05hello not a model")


def test_training_is_deterministic(small_tok, tmp_path):
    out = tmp_path / "tok.model"
    again = train_tokenizer([LEE], 400, sample_bytes=200_000, out_path=out)
    assert again.model_bytes == small_tok.model_bytes
    assert out.read_bytes() == small_tok.model_bytes
    assert small_tok.vocab_size == 400 and small_tok.bos_id == 1
    assert small_tok.pieces[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert small_tok.byte_ids.tolist() == list(range(4, 260))


def test_sample_lines_spread_over_all_inputs(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt.zst"
    a.write_text("".join(f"head {i}\n" for i in range(1000)))
    body = "".join(f"tail {i}\n" for i in range(1000)).encode()
    b.write_bytes(zstandard.ZstdCompressor().compress(body))
    lines = list(sample_lines([a, b], 2000))
    assert 1500 < sum(map(len, lines)) + len(lines) <= 2100
    assert any(x.startswith("head 9") for x in lines) and any(x.startswith("tail 9") for x in lines)
    assert list(sample_lines([a], 10**9)) == [f"head {i}" for i in range(1000)]
