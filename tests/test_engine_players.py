"""engine.players: words from tokenizer offsets, the automatic choice rule, explicit players and their errors."""

import pytest

from kdi_fast.engine.players import (MAX_PLAYERS, choose_players, encode_prompt, player_of_token, player_texts,
                                     resolve_players, split_words)


@pytest.fixture(scope="module")
def word_level_tokenizer():
    """A whitespace word-level tokenizer whose normalizer drops '#': 'a.b' is one token over three raw words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the cat sat on mat a.b . because it was tired and hungry".split()
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Replace("#", "")
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_split_words_keeps_inner_apostrophes_and_hyphens():
    text = "Hello, world! It's a home-town 12+7?"
    assert [text[a:b] for a, b in split_words(text)] == \
        ["Hello", ",", "world", "!", "It's", "a", "home-town", "12", "+", "7", "?"]


def test_words_of_a_real_tokenizer(smollm_tokenizer):
    enc = encode_prompt(smollm_tokenizer, "The capital of France, is Paris!")
    assert enc.words == ("The", "capital", "of", "France", ",", "is", "Paris", "!")
    assert enc.word_of_token == tuple(range(8))  # one token per word here (' capital' etc. carry the space)
    assert list(enc.input_ids) == smollm_tokenizer("The capital of France, is Paris!")["input_ids"]


def test_a_word_spans_several_tokens(smollm_tokenizer):
    enc = encode_prompt(smollm_tokenizer, "Mr O'Neil's home-town")
    assert enc.words == ("Mr", "O'Neil's", "home-town")
    tokens = [smollm_tokenizer.decode([t]) for t in enc.input_ids]
    by_word = {w: "".join(t for t, o in zip(tokens, enc.word_of_token) if o == w) for w in range(3)}
    assert by_word == {0: "Mr", 1: " O'Neil's", 2: " home-town"}
    assert len(enc.tokens_of_word(1)) > 1 and len(enc.tokens_of_word(2)) > 1


def test_whitespace_tokens_belong_to_no_word(smollm_tokenizer):
    enc = encode_prompt(smollm_tokenizer, "is    Paris")
    tokens = [smollm_tokenizer.decode([t]) for t in enc.input_ids]
    assert [w for t, w in zip(tokens, enc.word_of_token) if not t.strip()] == [-1]
    assert enc.words == ("is", "Paris")


def test_words_sharing_a_token_are_merged(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the cat a.b sat")
    assert enc.words == ("the", "cat", "a.b", "sat")
    assert enc.word_of_token == (0, 1, 2, 3)


def test_chat_template_maps_the_user_text(smollm_tokenizer):
    enc = encode_prompt(smollm_tokenizer, "Name a fruit.", chat_template=True)
    text = smollm_tokenizer.apply_chat_template([{"role": "user", "content": "Name a fruit."}], tokenize=False,
                                                add_generation_prompt=True)
    assert list(enc.input_ids) == smollm_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert enc.words == ("Name", "a", "fruit", ".")
    words = [w for w in enc.word_of_token if w >= 0]
    assert words == [0, 1, 2, 3]  # template tokens (system prompt, role markers) belong to no word
    assert enc.word_of_token[-1] == -1 and enc.word_of_token[0] == -1


def test_automatic_choice_spreads_over_content_words(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the cat sat on the mat because it was tired and hungry .")
    # 13 words; content words: cat1 sat2 mat5 tired9 hungry11 (m=5). n=4 takes candidate (2i+1)*5//8: 0, 1, 3, 4.
    assert choose_players(enc, 4) == [(1,), (2,), (9,), (11,)]
    assert choose_players(enc, 5) == [(1,), (2,), (5,), (9,), (11,)]
    # n=1: the middle candidate.
    assert choose_players(enc, 1) == [(5,)]


def test_automatic_choice_fills_with_stop_words_then_punctuation(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the cat on it . .")
    # 6 words > n=4: content [cat1]; stop words [the0, on2, it3] give k=3 -> all; punctuation not needed.
    assert choose_players(enc, 4) == [(0,), (1,), (2,), (3,)]
    # n=5: content 1 + stop 3 + punctuation [.4, .5] spread k=1 -> candidate 1*2//2 = 1 -> word 5.
    assert choose_players(enc, 5) == [(0,), (1,), (2,), (3,), (5,)]


def test_short_prompts_use_every_word_and_attention_keeps_the_last_token(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the cat sat .")
    assert choose_players(enc, 10) == [(0,), (1,), (2,), (3,)]
    assert choose_players(enc, 10, keep_last_token=True) == [(0,), (1,), (2,)]


def test_automatic_choice_skips_words_without_tokens(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the # cat")
    assert enc.words == ("the", "#", "cat") and enc.tokens_of_word(1) == []
    assert choose_players(enc, 5) == [(0,), (2,)]


def test_explicit_players_and_groups(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the cat sat on the mat")
    players = resolve_players(enc, [1, [2, 5], (3,)], n_players=10)
    assert players == [(1,), (2, 5), (3,)]
    assert player_of_token(enc, players) == [-1, 0, 1, 2, -1, 1]
    assert player_texts(enc, players) == ["cat", "sat ... mat", "on"]


@pytest.mark.parametrize("spec, error, match", [
    ([0, 9], ValueError, "out of range: the prompt has 6 words"),
    ([0, [1, 0]], ValueError, "in two players"),
    ([[]], ValueError, "group is empty"),
    ([], ValueError, "list of players is empty"),
    ([0, "cat"], TypeError, "word index"),
    ("0 1", TypeError, "list of word indices"),
    ([True], TypeError, "word index"),
])
def test_explicit_player_errors(word_level_tokenizer, spec, error, match):
    enc = encode_prompt(word_level_tokenizer, "the cat sat on the mat")
    with pytest.raises(error, match=match):
        resolve_players(enc, spec, n_players=10)


def test_a_chosen_word_without_tokens_is_an_error(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the # cat")
    with pytest.raises(ValueError, match=r"word 1 \('#'\) has no tokens"):
        resolve_players(enc, [0, 1], n_players=10)


def test_too_many_players_says_how_many_forwards_and_suggests_groups(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, " ".join(["cat"] * 20))
    with pytest.raises(ValueError, match=r"17 players need 2\^17 = 131,072 masked forwards.*Group words"):
        resolve_players(enc, list(range(17)), n_players=10)
    with pytest.raises(ValueError, match=r"2\^20 = 1,048,576"):
        resolve_players(enc, None, n_players=20)
    assert len(resolve_players(enc, None, n_players=MAX_PLAYERS)) == MAX_PLAYERS
    grouped = resolve_players(enc, [[2 * i, 2 * i + 1] for i in range(10)], n_players=10)
    assert len(grouped) == 10


def test_attention_masking_refuses_a_player_on_the_last_token(word_level_tokenizer):
    enc = encode_prompt(word_level_tokenizer, "the cat sat")
    with pytest.raises(ValueError, match="last prompt token"):
        resolve_players(enc, [0, 2], n_players=10, keep_last_token=True)
    assert resolve_players(enc, [0, 1], n_players=10, keep_last_token=True) == [(0,), (1,)]


def test_prompt_errors(smollm_tokenizer, word_level_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        encode_prompt(smollm_tokenizer, "   ")
    with pytest.raises(TypeError, match="must be a str"):
        encode_prompt(smollm_tokenizer, ["a"])
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(word_level_tokenizer, "the cat", chat_template=True)


# ---- words are made of grapheme clusters: a byte-order mark or a combining accent is never a word ----

_NFC = "Le caf\u00e9 na\u00efve est tr\u00e8s bon, d\u00e9j\u00e0 vu."


def test_split_words_keeps_combining_accents_in_their_word():
    import unicodedata

    nfd = unicodedata.normalize("NFD", _NFC)
    assert nfd != _NFC and len(nfd) > len(_NFC)
    words_nfc = [_NFC[a:b] for a, b in split_words(_NFC)]
    words_nfd = [nfd[a:b] for a, b in split_words(nfd)]
    assert words_nfc == ["Le", "caf\u00e9", "na\u00efve", "est", "tr\u00e8s", "bon", ",", "d\u00e9j\u00e0", "vu", "."]
    assert [unicodedata.normalize("NFC", w) for w in words_nfd] == words_nfc


@pytest.mark.parametrize("prefix", ["\ufeff", "\u0301", "\u200b"])
def test_a_byte_order_mark_or_a_lone_mark_is_not_a_word(prefix):
    text = prefix + "Hello world"
    assert [text[a:b] for a, b in split_words(text)] == ["Hello", "world"]


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_real_tokenizer_words_with_nfc_and_nfd_input(smollm_tokenizer, form):
    import unicodedata

    prompt = unicodedata.normalize(form, "\ufeff" + _NFC)
    enc = encode_prompt(smollm_tokenizer, prompt)
    # the model sees the text unchanged (no normalisation by kdi_fast; the byte-level tokenizer keeps bytes)
    assert list(enc.input_ids) == smollm_tokenizer(prompt)["input_ids"]
    assert smollm_tokenizer.decode(enc.input_ids) == prompt
    assert [unicodedata.normalize("NFC", w) for w in enc.words] == \
        ["Le", "caf\u00e9", "na\u00efve", "est", "tr\u00e8s", "bon", ",", "d\u00e9j\u00e0", "vu", "."]
    players = choose_players(enc, 4)
    assert all(any(c.isalnum() for c in enc.words[w]) for (w,) in players)
