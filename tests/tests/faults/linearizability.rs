//! A linearizability checker for compare-and-set registers, after Wing & Gong's search
//! with Lowe's memoization (the algorithm Knossos and Porcupine use).
//!
//! A history is a set of operations, each with the time it was invoked and the time its
//! answer arrived. It is linearizable when every operation can be given a point between
//! those two times at which it took effect, so that the register, replayed in that order,
//! gives every answer the clients saw. An operation whose answer never came (a timeout, a
//! dropped connection) may have taken effect at any time after it was invoked, or never:
//! it gets an infinite return time and an unknown answer.
//!
//! The search walks the invocations and returns in time order, tentatively linearizing an
//! invoked operation whenever the register can take it, and backtracking at a return whose
//! operation it has not placed. States already explored (the set of placed operations and
//! the register's value) are remembered, which keeps the search polynomial in practice.

use std::collections::HashSet;

/// What a client asked of the register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write(u64),
    /// Set to `new` if the value is `expect`.
    Cas {
        expect: u64,
        new: u64,
    },
}

/// What the client saw; `Unknown` when no answer came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read's value (`None`: the key did not exist).
    Read(Option<u64>),
    Written,
    Cas(bool),
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub client: usize,
    pub op: Op,
    pub outcome: Outcome,
    /// Nanoseconds since the run began.
    pub call: u64,
    /// `u64::MAX` for an operation whose answer never came.
    pub ret: u64,
    /// The answer's header revision and member (0 without an answer): not checked, but
    /// what a violation's report needs to tell a stale read from a lost write.
    pub rev: i64,
    pub member: u64,
}

/// The operations of `history` in flight within `before` nanoseconds ahead of `call` and
/// shortly after it, one line each in call order: the neighbourhood of a violation.
pub fn neighbourhood(history: &[Operation], call: u64, before: u64) -> String {
    let from = call.saturating_sub(before);
    let to = call + before / 4;
    let mut near: Vec<&Operation> = history
        .iter()
        .filter(|o| o.call <= to && o.ret >= from)
        .collect();
    near.sort_by_key(|o| o.call);
    let ms = |t: u64| {
        if t == u64::MAX {
            "-".to_string()
        } else {
            format!("{:.1}", t as f64 / 1e6)
        }
    };
    near.iter()
        .map(|o| {
            format!(
                "  c{} m{:x} {:?} -> {:?} [{} .. {}] rev {}\n",
                o.client,
                o.member,
                o.op,
                o.outcome,
                ms(o.call),
                ms(o.ret),
                o.rev
            )
        })
        .collect()
}

/// The register's next value if it can give `outcome` to `op` in state `value`.
fn step(value: Option<u64>, op: &Op, outcome: &Outcome) -> Option<Option<u64>> {
    match (op, outcome) {
        (Op::Read, Outcome::Read(seen)) => (*seen == value).then_some(value),
        // A read's answer is all it does; one without an answer constrains nothing.
        (Op::Read, Outcome::Unknown) => Some(value),
        (Op::Write(v), Outcome::Written | Outcome::Unknown) => Some(Some(*v)),
        (Op::Cas { expect, new }, Outcome::Cas(true)) => {
            (value == Some(*expect)).then_some(Some(*new))
        }
        (Op::Cas { expect, .. }, Outcome::Cas(false)) => (value != Some(*expect)).then_some(value),
        (Op::Cas { expect, new }, Outcome::Unknown) => Some(if value == Some(*expect) {
            Some(*new)
        } else {
            value
        }),
        _ => None,
    }
}

/// The verdict on one register's history.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the answers; the longest prefix of operations that could be
    /// ordered ended before the operation named (its client and invocation time).
    Violation {
        client: usize,
        call: u64,
    },
    /// The search gave up after this many steps.
    Undecided(u64),
}

/// The events of a history in time order, threaded as a doubly linked list so the search
/// can unlink an operation's call and return and put them back in constant time.
struct Events {
    /// Operation index and whether this is its call (true) or return.
    event: Vec<(usize, bool)>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// The call and return events of each operation.
    call_of: Vec<usize>,
    ret_of: Vec<usize>,
}

/// List index 0 is the head sentinel; events are 1..=2n; `END` ends the list.
const END: usize = usize::MAX;

impl Events {
    fn new(history: &[Operation]) -> Events {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * history.len());
        for (i, o) in history.iter().enumerate() {
            // At equal times a call sorts before a return: the two operations count as
            // concurrent, which can only accept more orders, never invent a violation.
            order.push((o.call, false, i));
            order.push((o.ret, true, i));
        }
        order.sort();
        let mut event = vec![(usize::MAX, false)];
        let mut call_of = vec![0; history.len()];
        let mut ret_of = vec![0; history.len()];
        for (_, is_ret, i) in order {
            if is_ret {
                ret_of[i] = event.len();
            } else {
                call_of[i] = event.len();
            }
            event.push((i, !is_ret));
        }
        let n = event.len();
        let prev = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let next = (0..n)
            .map(|i| if i + 1 < n { i + 1 } else { END })
            .collect();
        Events {
            event,
            prev,
            next,
            call_of,
            ret_of,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != END {
            self.prev[n] = p;
        }
    }

    /// Undoes `unlink(e)`; unlinks must be undone in reverse order.
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != END {
            self.prev[n] = e;
        }
    }
}

/// Checks one register's history (starting from a missing key), giving up after `budget`
/// search steps.
pub fn check(history: &[Operation], budget: u64) -> Verdict {
    let mut events = Events::new(history);
    let words = history.len().div_ceil(64).max(1);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // The operations placed so far, with the register's value before each.
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut value: Option<u64> = None;
    let mut longest = 0;
    let mut first_unplaced = 0;
    let mut steps = 0u64;
    let mut e = events.next[0];
    while events.next[0] != END {
        steps += 1;
        if steps > budget {
            return Verdict::Undecided(steps);
        }
        // The list always ends in a return, which either backtracks or fails, so the walk
        // never runs off its end.
        debug_assert_ne!(e, END);
        let (op, is_call) = events.event[e];
        if is_call {
            let o = &history[op];
            if let Some(after) = step(value, &o.op, &o.outcome) {
                placed[op / 64] |= 1 << (op % 64);
                if seen.insert((placed.clone(), after)) {
                    stack.push((op, value));
                    value = after;
                    events.unlink(e);
                    events.unlink(events.ret_of[op]);
                    e = events.next[0];
                    continue;
                }
                placed[op / 64] &= !(1 << (op % 64));
            }
            e = events.next[e];
        } else {
            // An operation returned before any order could place it: undo the last placement.
            if stack.len() > longest {
                longest = stack.len();
                first_unplaced = op;
            }
            let Some((last, before)) = stack.pop() else {
                let o = &history[first_unplaced];
                return Verdict::Violation {
                    client: o.client,
                    call: o.call,
                };
            };
            value = before;
            placed[last / 64] &= !(1 << (last % 64));
            events.relink(events.ret_of[last]);
            events.relink(events.call_of[last]);
            // Try the operations after the one just taken back.
            e = events.next[events.call_of[last]];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const BUDGET: u64 = 10_000_000;

    fn op(client: usize, op: Op, outcome: Outcome, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            op,
            outcome,
            call,
            ret,
            rev: 0,
            member: 0,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, Op::Read, Outcome::Read(None), 0, 1),
            op(0, Op::Write(1), Outcome::Written, 2, 3),
            op(1, Op::Read, Outcome::Read(Some(1)), 4, 5),
            op(1, Op::Cas { expect: 1, new: 2 }, Outcome::Cas(true), 6, 7),
            op(0, Op::Cas { expect: 1, new: 3 }, Outcome::Cas(false), 8, 9),
            op(0, Op::Read, Outcome::Read(Some(2)), 10, 11),
        ];
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let h = [
            op(0, Op::Write(1), Outcome::Written, 0, 1),
            op(0, Op::Write(2), Outcome::Written, 2, 3),
            op(1, Op::Read, Outcome::Read(Some(1)), 4, 5),
        ];
        assert_eq!(check(&h, BUDGET), Verdict::Violation { client: 1, call: 4 });
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps both writes, so it may see either.
        for seen in [1, 2] {
            let h = [
                op(0, Op::Write(1), Outcome::Written, 0, 10),
                op(1, Op::Write(2), Outcome::Written, 1, 11),
                op(2, Op::Read, Outcome::Read(Some(seen)), 2, 12),
                op(2, Op::Read, Outcome::Read(Some(seen)), 13, 14),
            ];
            assert_eq!(check(&h, BUDGET), Verdict::Linearizable, "saw {seen}");
        }
        // But two later reads cannot disagree about which came last.
        let h = [
            op(0, Op::Write(1), Outcome::Written, 0, 10),
            op(1, Op::Write(2), Outcome::Written, 1, 11),
            op(2, Op::Read, Outcome::Read(Some(1)), 12, 13),
            op(2, Op::Read, Outcome::Read(Some(2)), 14, 15),
        ];
        assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn two_successful_cas_from_the_same_value_is_a_violation() {
        let h = [
            op(0, Op::Write(1), Outcome::Written, 0, 1),
            op(1, Op::Cas { expect: 1, new: 2 }, Outcome::Cas(true), 2, 10),
            op(2, Op::Cas { expect: 1, new: 3 }, Outcome::Cas(true), 3, 11),
        ];
        assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn an_unanswered_write_may_take_effect_late_or_never() {
        // Seen after its invocation, long after the client gave up…
        let late = [
            op(0, Op::Write(1), Outcome::Unknown, 0, u64::MAX),
            op(1, Op::Read, Outcome::Read(None), 5, 6),
            op(1, Op::Read, Outcome::Read(Some(1)), 100, 101),
        ];
        assert_eq!(check(&late, BUDGET), Verdict::Linearizable);
        // …or never seen at all.
        let never = [
            op(0, Op::Write(1), Outcome::Unknown, 0, u64::MAX),
            op(1, Op::Read, Outcome::Read(None), 100, 101),
        ];
        assert_eq!(check(&never, BUDGET), Verdict::Linearizable);
        // But not before it was invoked, and not undone once seen.
        let early = [
            op(1, Op::Read, Outcome::Read(Some(1)), 0, 1),
            op(0, Op::Write(1), Outcome::Unknown, 5, u64::MAX),
        ];
        assert!(matches!(check(&early, BUDGET), Verdict::Violation { .. }));
        let undone = [
            op(0, Op::Write(1), Outcome::Unknown, 0, u64::MAX),
            op(1, Op::Read, Outcome::Read(Some(1)), 5, 6),
            op(1, Op::Read, Outcome::Read(None), 7, 8),
        ];
        assert!(matches!(check(&undone, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let h = [
            op(0, Op::Write(1), Outcome::Written, 0, 1),
            op(1, Op::Write(2), Outcome::Written, 2, 3),
            op(0, Op::Cas { expect: 2, new: 3 }, Outcome::Cas(false), 4, 5),
        ];
        assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }));
    }

    /// Simulates a real register under concurrent clients: each operation takes effect at a
    /// random instant inside its interval, so every history generated is linearizable;
    /// flipping one read's answer to a value the register never held at the time makes it
    /// not.
    #[test]
    fn random_concurrent_histories_from_a_real_register() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            let clients = rng.gen_range(2..6);
            let mut points: Vec<(u64, usize, Op, u64, u64)> = Vec::new();
            let mut t = vec![0u64; clients];
            for _ in 0..rng.gen_range(5..60) {
                let c = rng.gen_range(0..clients);
                let call = t[c] + rng.gen_range(0..5);
                let ret = call + rng.gen_range(1..20);
                t[c] = ret + 1;
                let at = rng.gen_range(call..=ret);
                let o = match rng.gen_range(0..3) {
                    0 => Op::Read,
                    1 => Op::Write(rng.gen_range(0..4)),
                    _ => Op::Cas {
                        expect: rng.gen_range(0..4),
                        new: rng.gen_range(0..4),
                    },
                };
                points.push((at, c, o, call, ret));
            }
            points.sort_by_key(|p| p.0);
            let mut value = None;
            let mut history = Vec::new();
            for (_, c, o, call, ret) in points {
                let outcome = match &o {
                    Op::Read => Outcome::Read(value),
                    Op::Write(v) => {
                        value = Some(*v);
                        Outcome::Written
                    }
                    Op::Cas { expect, new } => {
                        let ok = value == Some(*expect);
                        if ok {
                            value = Some(*new);
                        }
                        Outcome::Cas(ok)
                    }
                };
                // Some answers get lost, as they do under faults.
                let (outcome, ret) = if rng.gen_bool(0.1) && !matches!(o, Op::Read) {
                    (Outcome::Unknown, u64::MAX)
                } else {
                    (outcome, ret)
                };
                history.push(op(c, o, outcome, call, ret));
            }
            assert_eq!(
                check(&history, BUDGET),
                Verdict::Linearizable,
                "round {round}: {history:#?}"
            );
            // A read answering a value never written cannot be explained.
            if let Some(read) = history.iter_mut().find(|o| o.op == Op::Read) {
                read.outcome = Outcome::Read(Some(99));
                assert!(
                    matches!(check(&history, BUDGET), Verdict::Violation { .. }),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn the_search_reports_when_it_gives_up() {
        let h: Vec<_> = (0..20)
            .map(|i| op(i, Op::Write(i as u64), Outcome::Unknown, i as u64, u64::MAX))
            .chain([op(99, Op::Read, Outcome::Read(Some(99)), 50, 51)])
            .collect();
        assert!(matches!(check(&h, 100), Verdict::Undecided(_)));
    }
}
