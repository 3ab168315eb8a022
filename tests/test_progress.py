"""The progress channel: every long phase of a real job reports, in order, with counts that reach their totals; a
listener can stop the job, which then writes nothing; the CLI shows the same events on stderr."""

from __future__ import annotations

import threading

import pytest
from test_cli import run

from fmn_patch.cli import display
from fmn_patch.families.base import load_base
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.progress import Cancelled, Event, listened, listening, phase

FAST = dict(steps=4, images_per_prompt=1, image_steps=2, batch_size=2, bench="toy")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "refcache"))  # empty: references are drawn


def _phases(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.phase, []).append(e)
    return out


def test_a_training_reports_loading_references_pool_and_steps_in_order(pipeline_dirs):
    events: list[Event] = []
    with listening(events.append):
        base = load_base(str(pipeline_dirs["sd1"]))
        patch = train_patch(base, ["circle"], TrainConfig(**FAST))
    phases = _phases(events)
    names = list(phases)
    assert names[0].startswith("loading base")
    assert names[1:] == [
        "drawing reference images",
        "encoding the edit's prompts",  # the closed-form edit training starts from
        "denoising the target pool",
        "training",
    ], names
    for name, seen in phases.items():
        assert not seen[0].ended and seen[-1].ended, name  # a start and an end
        done = [e.done for e in seen]
        assert done == sorted(done), name
        if seen[0].total is not None:
            assert done[-1] == seen[0].total, name  # the counts reach the total
    steps = phases["training"]
    assert steps[0].total == 4 and steps[-1].note.startswith("loss ")
    references = phases["drawing reference images"]
    # per image and sampler step: prompts x 1 image x 2 steps
    assert references[0].unit == "steps" and references[0].total % 2 == 0 and len(references) > 3
    assert "image" in references[1].note
    assert patch.info.extra["final_loss"] > 0


def test_an_edit_counts_every_prompt_it_encodes(pipeline_dirs):
    """The edit's one long phase at full size, encoding its prompts (BENCHMARKS.md, edit at SD-1.5 size):
    its count ends at its total, the prompts the report says were encoded plus the preserved ones."""
    from fmn_patch.methods.edit import EditConfig, edit_patch

    events: list[Event] = []
    base = load_base(str(pipeline_dirs["sd1"]))
    with listening(events.append):
        edit_patch(base, ["circle", "bob"], config=EditConfig(vocab_words=20, bench="toy"))
    seen = _phases(events)["encoding the edit's prompts"]
    assert seen[-1].total is not None and seen[-1].done == seen[-1].total > 0
    assert [e.done for e in seen] == sorted(e.done for e in seen)  # it only counts up


def test_nothing_listens_by_default_and_listeners_are_per_thread():
    assert not listened()
    seen: list[Event] = []
    other: list[bool] = []
    with listening(seen.append):
        thread = threading.Thread(target=lambda: other.append(listened()))
        thread.start()
        thread.join()
        with phase("outer", 2, "rounds") as p, phase("inner", None, "files"):
            p.advance(2, note="half")
    assert other == [False]  # another thread's job is not reported to this listener
    assert [(e.phase, e.depth, e.done, e.ended) for e in seen] == [
        ("outer", 0, 0, False),
        ("inner", 1, 0, False),
        ("outer", 0, 2, False),
        ("inner", 1, 0, True),
        ("outer", 0, 2, True),
    ]
    assert seen[2].line() == "outer: 2/2 rounds (half)" and seen[-1].fraction == 1.0


def test_a_listener_that_raises_stops_the_job_between_steps(pipeline_dirs, tmp_path):
    base = load_base(str(pipeline_dirs["sd1"]))
    steps: list[int] = []

    def stop_at_second_step(event: Event) -> None:
        if event.phase == "training" and event.done:
            steps.append(event.done)
            if event.done == 2:
                raise Cancelled()

    with listening(stop_at_second_step), pytest.raises(Cancelled, match="nothing was written"):
        train_patch(base, ["circle"], TrainConfig(**FAST))
    assert steps == [1, 2]
    assert not (getattr(base.pipe.unet, "peft_config", None) or {})  # the adapter is gone again


def test_the_cli_prints_one_line_per_phase_off_a_terminal(capsys, pipeline_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(display, "QUIET_SECONDS", 0.0)  # the tiny pipeline's phases are over in less
    out = tmp_path / "c.safetensors"
    args = ["--base", str(pipeline_dirs["sd1"]), "--steps", "2", "--batch-size", "2", "--bench", "toy"]
    code, stdout, err = run(capsys, "train", "circle", *args, "-o", str(out))
    assert code == 0 and stdout.strip() == str(out)
    lines = [line for line in err.splitlines() if line.endswith(" ...")]
    assert lines[0].startswith("fmnpatch: loading base ")
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "fmnpatch: drawing reference images",
        "fmnpatch: encoding the edit's prompts",
        "fmnpatch: denoising the target pool",
        "fmnpatch: training",
    ]
    assert "fmnpatch: training (2 steps) ..." in lines


def test_a_phase_over_within_a_second_prints_nothing_and_a_long_one_its_line(capsys):
    import io
    import time

    stream = io.StringIO()
    shown = display.StderrDisplay(stream, bars=False)
    with listening(shown):
        with phase("quick"):
            pass
        with phase("slow", 3, "images"):
            time.sleep(display.QUIET_SECONDS + 0.5)
    shown.close()
    assert stream.getvalue() == "fmnpatch: slow (3 images) ...\n"


def test_on_a_terminal_each_phase_is_a_bar(monkeypatch):
    import io

    monkeypatch.setattr(display, "QUIET_SECONDS", 0.0)
    stream = io.StringIO()
    shown = display.StderrDisplay(stream, bars=True)
    with listening(shown), phase("drawing reference images", 3, "steps") as p:
        for _ in range(3):
            p.advance(note="image 1 of 1")
    shown.close()
    last = stream.getvalue().split("\r")[-1]
    assert "drawing reference images" in last and "3/3" in last and "image 1 of 1" in last
