"""A prompt attack in the spirit of UnlearnDiffAtk (Zhang et al., 2023) and Ring-A-Bell (Tsai et al., 2023): a
greedy coordinate search over the tokenizer's words for the short prompt that minimises the patched model's
denoising loss on the concept's reference latents (fixed noise and timesteps). Candidate swaps are ranked by the
loss gradient at a placeholder embedding (as GCG does, Zou et al., 2023) and scored exactly, in batches."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..families.base import Base, BaseLike, as_base
from .attack import Attack, AttackContext, AttackPlan, register_attack
from .config import SearchConfig

Stop = Literal["candidates", "seconds"]


@dataclass
class SearchResult:
    """The prompt found and what it cost."""

    prompt: str
    loss: float  # denoising loss of the found prompt on the reference latents
    start_loss: float
    candidates: int  # candidate prompts scored (random starts included)
    restarts: int  # local optima left for a fresh random start
    seconds: float
    stopped: Stop  # which budget ended the search


def search_prompt(base: BaseLike, latents: torch.Tensor, config: SearchConfig, seed: int = 0) -> SearchResult:
    """Greedy coordinate search for `config.length` words minimising the denoising loss on `latents`.

    Each round ranks every (position, word) swap by its first-order loss change (e_word - e_current) . grad and
    scores the swaps in that order, `config.batch_size` at a time, until one lowers the loss (accepted: next round).
    When no swap does (a local optimum), it restarts from random words. It returns the best prompt seen when a
    budget is spent; a batch or gradient is not started when the time it took last would overrun `config.seconds`.
    """
    base = as_base(base)
    family = base.family
    family.text.require_one_encoder("the search attack")
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x0 = latents[: config.images].to(family.adapters.device, family.adapters.dtype)  # (n, C, h, w)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    t = torch.randint(0, family.noise.num_train_timesteps, (len(x0),), generator=gen)
    t = t.to(family.adapters.device)
    noisy, target = family.noise.add_noise(x0, noise, t), family.noise.target(x0, noise, t)
    words = family.text.word_tokens()
    pool = torch.tensor(list(words))  # (P,)
    table = family.text.token_table().detach().float()  # (V, d)
    current = _random_words(pool, config.length, gen)
    repeat = (1,) * (x0.ndim - 1)

    def losses(candidates: list[list[int]]) -> torch.Tensor:  # (B,) mean loss over the n latents
        cond = family.text.encode([" ".join(words[i] for i in c) for c in candidates])  # (B, T, D)
        b, n = len(candidates), len(x0)
        with torch.no_grad():
            pred = family.noise.denoise(
                noisy.repeat(b, *repeat), t.repeat(b), cond.repeat_interleave(n)
            )  # (B * n, ...)
        dims = tuple(range(1, pred.ndim))
        return (pred.float() - target.float().repeat(b, *repeat)).pow(2).mean(dims).view(b, n).mean(1)

    def spent(scored: int, upcoming: float) -> Stop | None:
        if scored >= config.max_candidates:
            return "candidates"
        return "seconds" if time.perf_counter() - started + upcoming > config.seconds else None

    loss = start = float(losses([current])[0])
    best, best_loss = current, loss
    scored, restarts, batch_s, grad_s = 1, 0, 0.0, 0.0
    while not (stopped := spent(scored, grad_s + batch_s)):
        tick = time.perf_counter()
        grad = _embedding_gradient(base, current, noisy, t, target)  # (L, d)
        grad_s = time.perf_counter() - tick
        change = table[pool] @ grad.T - (table[current] * grad).sum(-1)  # (P, L) predicted loss change
        change[pool[:, None] == torch.tensor(current)[None, :]] = math.inf  # keeping a word is no swap
        flat = change.flatten()  # index k: word pool[k // L] at position k % L
        ranked = flat.sort(stable=True).indices
        order = ranked[torch.isfinite(flat[ranked])].tolist()
        accepted = False
        for begin in range(0, len(order), config.batch_size):
            if stopped := spent(scored, batch_s):
                break
            tick = time.perf_counter()
            swaps = order[begin : begin + min(config.batch_size, config.max_candidates - scored)]
            variants = [_swap(current, k % config.length, int(pool[k // config.length])) for k in swaps]
            scores = losses(variants)
            scored, batch_s = scored + len(variants), time.perf_counter() - tick
            if float(scores.min()) < loss:
                loss, current, accepted = float(scores.min()), variants[int(scores.argmin())], True
                break
        if loss < best_loss:
            best, best_loss = current, loss
        if stopped:
            break
        if not accepted:  # no single swap helps: start again from a random prompt, keep the best so far
            if stopped := spent(scored, batch_s):
                break
            current, restarts = _random_words(pool, config.length, gen), restarts + 1
            loss, scored = float(losses([current])[0]), scored + 1
    prompt = " ".join(words[i] for i in best)
    return SearchResult(prompt, best_loss, start, scored, restarts, time.perf_counter() - started, stopped)


def _random_words(pool: torch.Tensor, length: int, gen: torch.Generator) -> list[int]:
    return [int(pool[i]) for i in torch.randint(len(pool), (length,), generator=gen)]


def _swap(tokens: list[int], position: int, token: int) -> list[int]:
    return [token if i == position else old for i, old in enumerate(tokens)]


def _embedding_gradient(
    base: Base, tokens: list[int], noisy: torch.Tensor, t: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """(L, d) gradient of the denoising loss at the input embeddings of ``tokens``, through placeholder tokens."""
    family = base.family
    names = [f"<attack-search-{i}>" for i in range(len(tokens))]
    table = family.text.token_table().detach()
    with family.text.added_tokens(names, table[tokens]) as weight, torch.enable_grad():
        cond = family.text.encode_with_grad([" ".join(names)])
        pred = family.noise.denoise(noisy, t, cond.expand(len(noisy)))
        (grad,) = torch.autograd.grad(F.mse_loss(pred.float(), target.float()), weight)
    return grad[-len(tokens) :].float()


def search_attack(ctx: AttackContext) -> AttackPlan:
    """``search_prompt`` on the model as it is now; the found prompt is drawn with as many seeds as the bench's
    prompts of the concept have images (prompts x seeds)."""
    config, sampler, concept = ctx.config.search, ctx.sampler, ctx.concept
    found = search_prompt(ctx.base, ctx.latents, config, ctx.config.seed)
    count = len(ctx.bench.prompts(concept)) * len(sampler.seeds)
    names = {w.lower() for w in concept.names}
    details = {
        **dataclasses.asdict(found),
        "uses_concept_words": any(w in found.prompt.split() for n in names for w in n.split()),
    }
    budget = {**dataclasses.asdict(config), "images": min(config.images, len(ctx.latents))}
    many = dataclasses.replace(sampler, seeds=tuple(range(count)))
    return AttackPlan([found.prompt], budget, details, found.seconds, sampler=many)


register_attack(
    Attack("search", search_attack, latents=lambda config: config.search.images, one_encoder=True, order=30)
)
