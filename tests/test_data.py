from __future__ import annotations

import csv
import json

import pytest

from grpokit.data import DataError, PromptDataset, PromptSampler, load_prompt_dataset, render_prompt

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_csv(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def error_text(path, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        load_prompt_dataset(path, **kwargs)
    return str(caught.value)


# ----------------------------------------------------------------------------- formats


def test_jsonl_keeps_extra_columns_for_rewards(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": CHAT, "answer": "4"}]
    )
    data = load_prompt_dataset(path, required_columns=["answer"])
    assert len(data) == 2
    assert data.columns == ["prompt", "answer"]
    assert data.prompts == ["1+1?", CHAT]
    assert data[1] == {"prompt": CHAT, "answer": "4"}


def test_blank_lines_in_jsonl_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}, "", {"prompt": " "}])
    assert "line 3" in error_text(path)


def test_json_array_file_is_read_as_rows(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": 2}]))
    assert load_prompt_dataset(path).prompts == ["a", "b"]


def test_csv_rows_are_text(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["prompt", "answer"], [["Add 1 and 2", "3"], ["Add 2, 2", "4"]])
    data = load_prompt_dataset(path, required_columns=["answer"])
    assert data[1] == {"prompt": "Add 2, 2", "answer": "4"}


def test_parquet_keeps_chat_message_lists(tmp_path):
    pandas = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pandas.DataFrame(
        {"prompt": [CHAT, [{"role": "user", "content": "hi"}]], "answer": ["4", "x"]}
    ).to_parquet(path)
    data = load_prompt_dataset(path, required_columns=["answer"])
    assert data.prompts[0] == CHAT
    assert data[1]["answer"] == "x"


def test_datasets_directory_and_split_choice(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    data = load_prompt_dataset(tmp_path / "single", prompt_column="question")
    assert data.prompts == ["q1", "q2"]

    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    )
    splits.save_to_disk(str(tmp_path / "splits"))
    assert len(load_prompt_dataset(tmp_path / "splits", prompt_column="question", split="test")) == 1
    message = error_text(tmp_path / "splits", prompt_column="question")
    assert "train" in message and "test" in message


# ----------------------------------------------------------------------------- bad input


def test_unreadable_json_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, '{"prompt": "unterminated'])
    message = error_text(path)
    assert str(path) in message and "line 2" in message and "not valid JSON" in message


def test_missing_prompt_column_names_file_row_and_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok"}, {"question": "where is it"}])
    message = error_text(path)
    assert str(path) in message and "line 2" in message and "column 'prompt'" in message
    assert "'question'" in message  # lists what the row does have


def test_missing_required_column_in_parquet_names_row(tmp_path):
    pandas = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pandas.DataFrame({"prompt": ["a"]}).to_parquet(path)
    message = error_text(path, required_columns=["answer"])
    assert str(path) in message and "row 0" in message and "column 'answer'" in message


def test_whitespace_prompt_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok"}, {"prompt": " \n\t"}])
    message = error_text(path)
    assert (
        str(path) in message and "line 2" in message and "column 'prompt'" in message and "empty" in message
    )


@pytest.mark.parametrize(
    ("prompt", "complaint"),
    [
        ([{"role": "user"}], "'role' and 'content'"),
        (["just text in a list"], "'role' and 'content'"),
        ([{"role": "wizard", "content": "hi"}], "unknown role 'wizard'"),
        ([], "empty"),
        ([{"role": "user", "content": "  "}], "empty"),
        (42, "text or a list of chat messages"),
    ],
)
def test_malformed_chat_messages_are_rejected(tmp_path, prompt, complaint):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": prompt}])
    message = error_text(path)
    assert (
        str(path) in message and "line 1" in message and "column 'prompt'" in message and complaint in message
    )


def test_none_in_required_column_is_rejected(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]
    )
    message = error_text(path, required_columns=["answer"])
    assert "line 2" in message and "column 'answer'" in message
    assert "line 1" not in message


def test_empty_csv_cell_in_required_column_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["prompt", "answer"], [["a", "1"], ["b", ""]])
    message = error_text(path, required_columns=["answer"])
    assert str(path) in message and "row 1" in message and "column 'answer'" in message


def test_problems_are_collected_not_just_the_first(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": ""}, "{oops", {"prompt": "fine"}, {"text": "x"}])
    with pytest.raises(DataError) as caught:
        load_prompt_dataset(path)
    assert [p.location for p in caught.value.problems] == ["line 1", "line 2", "line 4"]
    assert "3 problem(s)" in str(caught.value)


def test_problem_list_is_capped_at_max_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": ""}] * 5)
    with pytest.raises(DataError) as caught:
        load_prompt_dataset(path, max_errors=2)
    assert len(caught.value.problems) == 2
    assert "5 problem(s)" in str(caught.value) and "first 2" in str(caught.value)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert "no rows" in error_text(path)


def test_unknown_extension_and_missing_file_are_errors(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    assert ".jsonl" in error_text(path)
    assert "no such file" in error_text(tmp_path / "absent.jsonl")


def test_from_records_validates_too():
    with pytest.raises(DataError, match="row 1: column 'prompt'"):
        PromptDataset.from_records([{"prompt": "a"}, {"prompt": ""}], source="<gsm8k-mini>")


# ----------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def tokenizer_with_template():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tokenizer


def test_messages_without_template_join_contents_with_newlines():
    assert render_prompt(CHAT, None) == "Be brief.\nWhat is 2+2?"
    assert render_prompt("plain", None) == "plain"


def test_messages_with_template_use_it_with_generation_prompt(tokenizer_with_template):
    expected = "<|system|>Be brief.\n<|user|>What is 2+2?\n<|assistant|>"
    assert render_prompt(CHAT, tokenizer_with_template) == expected


def test_text_with_template_becomes_one_user_message(tokenizer_with_template):
    data = PromptDataset.from_records([{"prompt": "hi"}])
    assert data.render(0, tokenizer_with_template) == "<|user|>hi\n<|assistant|>"


def test_tokenizer_without_template_gives_raw_text(tokenizer_with_template):
    class NoTemplate:
        chat_template = None

        def apply_chat_template(self, *args, **kwargs):  # pragma: no cover - must not be called
            raise AssertionError("template applied although there is none")

    assert render_prompt("plain", NoTemplate()) == "plain"
    assert render_prompt(CHAT, NoTemplate()) == "Be brief.\nWhat is 2+2?"


def test_reward_columns_repeat_each_prompt_row_group_size_times():
    data = PromptDataset.from_records(
        [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2", "tag": "t"}]
    )
    assert data.columns_for([1, 0], repeat=2) == {
        "answer": ["2", "2", "1", "1"],
        "tag": ["t", "t", None, None],
    }


# ----------------------------------------------------------------------------- sampler


def test_each_epoch_visits_every_prompt_once():
    sampler = PromptSampler(5, seed=3)
    first, second = sampler.next_batch(5), sampler.next_batch(5)
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert first != second  # a fresh shuffle per epoch (fixed seed, so this is deterministic)


def test_batch_spanning_an_epoch_boundary_continues_into_the_next_epoch():
    sampler = PromptSampler(4, shuffle=False)
    assert sampler.next_batch(3) == [0, 1, 2]
    assert sampler.next_batch(3) == [3, 0, 1]
    assert sampler.epoch == 1


def test_same_seed_same_order_different_seed_different_order():
    draws = [PromptSampler(20, seed=s).next_batch(20) for s in (7, 7, 8)]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_resumed_sampler_continues_with_exactly_the_same_prompts():
    uninterrupted = PromptSampler(7, seed=11)
    expected = [uninterrupted.next_batch(3) for _ in range(6)]

    before_crash = PromptSampler(7, seed=11)
    drawn = [before_crash.next_batch(3) for _ in range(2)]
    state = json.loads(json.dumps(before_crash.state_dict()))  # survives a checkpoint round trip

    resumed = PromptSampler(7, seed=11)
    resumed.load_state_dict(state)
    drawn += [resumed.next_batch(3) for _ in range(4)]
    assert drawn == expected


def test_resuming_on_a_different_data_set_size_is_refused():
    state = PromptSampler(7, seed=1).state_dict()
    with pytest.raises(ValueError, match="num_prompts"):
        PromptSampler(8, seed=1).load_state_dict(state)


# ----------------------------------------------------------------------------- ragged CSV, prompt tokens


def test_ragged_csv_rows_are_caught_at_load_naming_row_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,answer\n"1+1=",2\n2+2=,4,extra\n"multi\nline",5\n3+3=\n')
    with pytest.raises(DataError) as caught:
        load_prompt_dataset(path)
    problems = {p.location: p.message for p in caught.value.problems}
    assert set(problems) == {"row 1", "row 3"}  # the quoted two-line prompt (row 2) is one well-formed row
    assert "has 3 field(s) but the header has 2 (line 3)" in problems["row 1"]
    assert "has 1 field(s) but the header has 2 (line 6)" in problems["row 3"]


@pytest.fixture(scope="module")
def char_tokenizer():
    from grpokit.models import build_char_tokenizer

    return build_char_tokenizer("0123456789+=")  # one token per character, no special tokens added


def test_prompt_over_the_token_limit_is_an_error_naming_file_line_and_limit(tmp_path, char_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1="}, {"prompt": "9" * 50 + "+1="}, {"prompt": "2+2="}])
    data = load_prompt_dataset(path)
    with pytest.raises(DataError) as caught:
        data.check_prompt_tokens(char_tokenizer, max_tokens=8, limit_reason="data.max_prompt_tokens")
    (problem,) = caught.value.problems
    assert (problem.source, problem.location, problem.column) == (str(path), "line 2", "prompt")
    assert "prompt is 53 tokens, over the limit of 8 (data.max_prompt_tokens)" in problem.message
    assert "data.truncate_prompts: left" in problem.message


def test_truncate_left_keeps_the_last_tokens_and_counts_the_cut_prompts(tmp_path, char_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1="}, {"prompt": "123456789+1="}])
    data = load_prompt_dataset(path)
    assert data.check_prompt_tokens(char_tokenizer, max_tokens=6, truncate="left") == 1
    assert data.render(0, char_tokenizer) == "1+1="  # within the limit: untouched
    assert data.render(1, char_tokenizer) == "789+1="  # the last 6 characters = 6 tokens


def test_prompt_that_encodes_to_nothing_names_row_and_tokenizer_class(tmp_path):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A normalizer that deletes letters: a prompt of letters encodes to nothing (as a mismatched tokenizer can).
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "1": 1, "+": 2, "=": 3}, unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(Regex("[a-z]"), "")
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    data = PromptDataset.from_records([{"prompt": "1+1="}, {"prompt": "abc"}])
    with pytest.raises(DataError) as caught:
        data.check_prompt_tokens(tokenizer)
    (problem,) = caught.value.problems
    assert problem.location == "row 1"
    assert f"encodes to no tokens with {type(tokenizer).__name__}" in problem.message


def test_token_check_of_a_large_data_set_is_fast(char_tokenizer):
    import time

    data = PromptDataset.from_records([{"prompt": f"{i}+{i}="} for i in range(20_000)])
    started = time.perf_counter()
    assert data.check_prompt_tokens(char_tokenizer, max_tokens=64) == 0
    # Batch tokenization runs ~1e5-1e6 short prompts per second; a per-row loop through the Python tokenizer
    # call is about 10x slower. 10 s bounds a loaded shared CPU with a wide margin.
    assert time.perf_counter() - started < 10.0
