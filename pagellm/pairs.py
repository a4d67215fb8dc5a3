"""Reward-model pairs at the length PPO scores, built from the fine-tuned policy.

Why: the data module's pairs (`pagellm.data`, Appendix A.3) are small edits of each user's label
list, whose length L is half the user's training positives (mean 4 on synthetic data, 1 to 2 on
sparse real data), while PPO asks the reward models to score rollouts of T = ``ppo_list_len``
items (20, the evaluated page), mostly items outside any label list. A reward model trained
only on the former is asked, in PPO, about lists it has never seen. So, once the policy is
fine-tuned, the reward stage rebuilds every pair at length T and adds pairs against the
policy's own lists (on-policy rejected lists, as in iterated RLHF):

    fill(u, exclude)     the fine-tuned policy's greedy list for u's training prompt (never an
                         item of the prompt), minus `exclude`: the tail PPO's rollouts will have

    edit families        chosen' = chosen + fill, rejected' = rejected + fill, cut to T, with
    (preference, ranked,          exclude = the items of both lists: the two lists share their
     diversity, redundancy)       tail, so they still differ exactly where the data module's edit did
    on-policy-greedy     chosen = label list + fill(u, label list) (the golden page completed by
                         the policy), rejected = the policy's greedy list
    on-policy-sampled    chosen as above, rejected = a list sampled from the fine-tuned policy at
                         the PPO rollout temperature (what PPO's first rollouts draw)

A pair whose two lists are equal is dropped (a policy that already puts the label list on top
of its greedy page). Held-out users (`PageLLMData.heldout_users`) keep all their pairs out of
training, as in the data module.

Token labels (the item-level model's per-position supervision): ``1`` = the item is the chosen
list's item at this position, ``0`` = it is not, ``-1`` = no label. Only the first L positions
(the golden part) are labelled: the fill is neither known to be good nor known to be bad, and
it is the same in both lists. Chosen lists: 1 on the golden part, -1 on the fill.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pagellm.data import PreferencePair

ON_POLICY = ("on-policy-greedy", "on-policy-sampled")
NO_LABEL = -1


def _fill(greedy: Sequence[int], exclude: set, room: int) -> list[int]:
    return [i for i in greedy if i not in exclude][:max(room, 0)]


def _labels(items: Sequence[int], chosen: Sequence[int], golden_len: int) -> list[int]:
    return [(int(x == chosen[p]) if p < golden_len else NO_LABEL) for p, x in enumerate(items)]


def extend_pair(pair: PreferencePair, greedy: Sequence[int], length: int) -> PreferencePair:
    """A data-module pair with both lists completed to `length` by the same greedy tail."""
    golden = len(pair.chosen)
    tail = _fill(greedy, set(pair.chosen) | set(pair.rejected), length - golden)
    chosen, rejected = (list(pair.chosen) + tail)[:length], (list(pair.rejected) + tail)[:length]
    return PreferencePair(pair.user, pair.kind, chosen, rejected, _labels(chosen, chosen, golden),
                          _labels(rejected, chosen, golden), pair.source)


def on_policy_pairs(user: int, label_list: Sequence[int], greedy: Sequence[int], sampled: Sequence[int],
                    length: int) -> list[PreferencePair]:
    """The golden page completed by the policy against the policy's greedy and sampled lists."""
    golden = min(len(label_list), length)
    chosen = (list(label_list) + _fill(greedy, set(label_list), length - len(label_list)))[:length]
    out = []
    for kind, rejected in zip(ON_POLICY, (greedy, sampled)):
        rejected = list(rejected)[:length]
        if rejected and rejected != chosen:
            out.append(PreferencePair(user, kind, chosen, rejected, _labels(chosen, chosen, golden),
                                      _labels(rejected, chosen, golden), "fine-tuned policy"))
    return out


def rollout_length_pairs(pairs: Sequence[PreferencePair], label_lists: Mapping[int, Sequence[int]],
                         greedy: Mapping[int, Sequence[int]], sampled: Mapping[int, Sequence[int]],
                         length: int, users: Sequence[int] | None = None) -> list[PreferencePair]:
    """Every pair of `pairs` completed to `length`, plus the on-policy pairs of `users` (default:
    the users of `pairs`). `greedy` / `sampled`: user -> the fine-tuned policy's lists."""
    out = [extend_pair(p, greedy.get(p.user, ()), length) for p in pairs]
    for u in (sorted({p.user for p in pairs}) if users is None else users):
        if u in label_lists and u in greedy:
            out.extend(on_policy_pairs(u, label_lists[u], greedy[u], sampled.get(u, ()), length))
    return out
