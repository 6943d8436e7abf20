"""Run by tests/test_wheels.py inside the aarch64 environment (qemu user-mode), against the installed
aarch64 wheel: `python -I arm_guest.py TASK.json RESULT.json`.

-I keeps the checkout off sys.path, so what runs is the wheel's edgesdk. Everything in one process,
because every Python start under emulation costs seconds. TASK holds what the x86 side prepared (the
tokenizer corpus, the generation settings, a saved chat session); RESULT what this side saw, for the
x86 side to compare.
"""
import dataclasses
import json
import platform
import sys
import time


def tokenize_corpus(task: dict) -> dict:
    from edgesdk import gguf
    from edgesdk.tokenizer import Tokenizer

    ids = {}
    for name, job in task["tokenizer"].items():
        with gguf.open(job["model"]) as file:
            tokenizer = Tokenizer.from_gguf(file)
        ids[name] = [[tokenizer.encode(text, add_special=a, parse_special=p) for a, p in job["modes"]]
                     for text in job["corpus"]]
    return ids


def generate(model, job: dict) -> dict:
    text = model.generate(job["prompt"], **job["options"])
    return {"text": text, "prompt_ids": model.tokenize(job["prompt"]), "cached_ids": model.cached_ids,
            "finish_reason": model.last_stats.finish_reason, "plan": dataclasses.asdict(model.memory_plan)}


def resume_session(model, job: dict) -> dict:
    import edgesdk

    model.reset()
    session = edgesdk.ChatSession.load(job["path"], model)
    restored = {"history": session.history, "cached_ids": model.cached_ids}
    answer = session.send(job["next_turn"])   # with the sampling options the session saved
    stats = model.last_stats
    return dict(restored, answer=answer, reused_tokens=stats.reused_tokens, completion_tokens=stats.completion_tokens)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        task = json.load(f)
    import edgesdk
    from edgesdk import _native

    result = {"machine": platform.machine(), "edgesdk_file": edgesdk.__file__,
              "isa": _native.isa_current(), "seconds": {}}
    started = time.perf_counter()

    def timed(part, value):
        nonlocal started
        result[part] = value
        now = time.perf_counter()
        result["seconds"][part] = round(now - started, 1)
        started = now

    timed("tokenizer", tokenize_corpus(task))
    # One load (the memory planner, the weights repacked) for both: the session was saved with these settings.
    with edgesdk.load(task["generate"]["model"], **task["generate"]["load"]) as model:
        timed("load", None)
        timed("generate", generate(model, task["generate"]))
        timed("session", resume_session(model, task["session"]))
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
