//! The search itself: a Wing–Gong walk over one key's event list with memoized
//! configurations, made tractable for a register with unique values by three facts.
//!
//! 1. A value, once overwritten, never returns; so while some remaining read wants the current
//!    value, no update may take effect (such moves are skipped, not tried).
//! 2. Some moves never need an alternative (forced moves, see [`Move::Forced`]); they are made
//!    first, in every configuration, so the configurations the search branches from are few.
//! 3. Every state no remaining read wants behaves the same from then on, so the memo treats
//!    them as one.
//!
//! All indexes here are built by [`Problem::new`](super::Problem) from its own vectors' lengths.

use super::{Act, Outcome, Problem, State, Stuck, NIL};
use std::collections::HashSet;

pub(super) fn search(problem: &Problem, states_max: u64) -> Outcome {
    Search::new(problem).run(states_max)
}

/// What the search may do with a pending operation at the current point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// It cannot take effect now.
    Skip,
    /// It takes effect now, and no alternative needs trying: if the configuration after it
    /// fails, so does the one before. Two cases. A read that the state satisfies can always go
    /// first: moving it earlier breaks no real-time order (whatever had to precede it has
    /// returned, so is placed) and changes no state. An update that no remaining read will
    /// observe, placed while no remaining read can return the current state (see
    /// [`Search::compute_wanted`]), leaves the state as useless as before, and taking it out of
    /// a later spot changes nothing (nothing read it there).
    Forced,
    /// It may take effect now or later: try now, and later on backtracking.
    Branch,
}

/// The memo's view of the state: every state no remaining read wants behaves the same from
/// here on, so they are one state. Merging them is what keeps high concurrency tractable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MemoState {
    Dead,
    Absent,
    Value(u32),
}

/// One key's search in progress.
struct Search<'p> {
    problem: &'p Problem,
    /// The event list, doubly linked, with a sentinel head at `head`.
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    placed: Bits,
    state: State,
    /// Per write: how many of the reads that returned its value are not placed yet.
    readers_left: Vec<u32>,
    /// How many reads that returned "not found" are not placed yet.
    absent_readers_left: u32,
    /// Whether some remaining read could still return the current state; see
    /// [`Search::compute_wanted`]. Kept up to date with every move.
    wanted: bool,
    /// Configurations reached; all but those on the current path are known to fail.
    seen: HashSet<MemoKey>,
    /// The moves of the current path.
    stack: Vec<Step>,
}

/// One move of the search's current path, with what undoing it must restore.
#[derive(Debug, Clone, Copy)]
struct Step {
    call: usize,
    state_before: State,
    wanted_before: bool,
    forced: bool,
}

impl<'p> Search<'p> {
    fn new(problem: &'p Problem) -> Search<'p> {
        let n_events = problem.events.len();
        let head = n_events;
        let mut next: Vec<usize> = (0..=n_events)
            .map(|e| if e + 1 < n_events { e + 1 } else { NIL })
            .collect();
        next[head] = if n_events == 0 { NIL } else { 0 };
        let mut prev: Vec<usize> = (0..=n_events)
            .map(|e| if e == 0 { head } else { e - 1 })
            .collect();
        prev[head] = NIL;
        let mut readers_left = vec![0u32; problem.ops.len()];
        let mut absent_readers_left = 0;
        for lop in &problem.ops {
            match lop.act {
                Act::Read(Some(w)) => readers_left[w as usize] += 1,
                Act::Read(None) => absent_readers_left += 1,
                _ => {}
            }
        }
        let mut search = Search {
            problem,
            next,
            prev,
            head,
            placed: Bits::new(problem.ops.len()),
            state: None,
            readers_left,
            absent_readers_left,
            wanted: false,
            seen: HashSet::new(),
            stack: Vec::new(),
        };
        search.wanted = search.compute_wanted();
        search
    }

    fn run(mut self, states_max: u64) -> Outcome {
        let mut deepest: Option<Stuck> = None;
        // A configuration just reached gets its forced moves first, so that every configuration
        // the search branches from (and remembers) is closed under them. Otherwise the same
        // commuting moves would be interleaved with each branch in every possible way.
        let mut fresh = true;
        let mut cursor = NIL;
        while self.next[self.head] != NIL {
            if self.seen.len() as u64 > states_max {
                return Outcome::Undecided;
            }
            if fresh {
                fresh = false;
                cursor = self.next[self.head];
                let Some(call) = self.find_forced() else {
                    continue;
                };
                if self.place(call, true) {
                    fresh = true;
                    continue;
                }
                // The configuration after a forced move is known to fail, so the one before
                // it does too.
                match self.backtrack() {
                    Some(resume) => cursor = resume,
                    None => break,
                }
                continue;
            }
            let is_call = cursor != NIL && self.problem.events[cursor].1;
            if is_call {
                match self.classify(self.problem.events[cursor].0 as usize) {
                    Move::Skip => cursor = self.next[cursor],
                    how => {
                        if self.place(cursor, how == Move::Forced) {
                            fresh = true;
                        } else {
                            cursor = self.next[cursor];
                        }
                    }
                }
                continue;
            }
            // A return of an operation not yet placed: it had to take effect before now.
            if cursor != NIL {
                let blocked = self.problem.events[cursor].0 as usize;
                if deepest.is_none_or(|d| self.stack.len() > d.placed) {
                    deepest = Some(Stuck {
                        blocker: blocked,
                        placed: self.stack.len(),
                        state: self.state,
                    });
                }
            }
            match self.backtrack() {
                Some(resume) => cursor = resume,
                None => break,
            }
        }
        if self.next[self.head] == NIL {
            return Outcome::Linearizable;
        }
        // A failed search always met a return first, so `deepest` is set.
        Outcome::NotLinearizable(deepest.unwrap_or(Stuck {
            blocker: 0,
            placed: 0,
            state: None,
        }))
    }

    /// The first forced move among the operations that may take effect now (calls before the
    /// first return in the list).
    fn find_forced(&self) -> Option<usize> {
        let mut e = self.next[self.head];
        while e != NIL {
            let (n, is_call) = self.problem.events[e];
            if !is_call {
                return None;
            }
            if self.classify(n as usize) == Move::Forced {
                return Some(e);
            }
            e = self.next[e];
        }
        None
    }

    /// Whether some remaining read could still return the current state. For a value: any
    /// remaining read of it (values are unique, so it is now or never). For "not found", which
    /// every delete brings back, only a remaining read that could take effect before this
    /// stretch of absence must end: before the earliest return of a write not yet placed
    /// (deletes do not end it). In the event list that is a "not found" read's call before
    /// the first return of a write. Without that refinement a key with deletes and "not found"
    /// reads far in the future would count as wanted almost everywhere, and the search would
    /// branch where it need not.
    fn compute_wanted(&self) -> bool {
        match self.state {
            Some(w) => self.readers_left[w as usize] > 0,
            None if self.absent_readers_left == 0 => false,
            None => {
                let mut e = self.next[self.head];
                while e != NIL {
                    let (n, is_call) = self.problem.events[e];
                    match (self.problem.ops[n as usize].act, is_call) {
                        (Act::Read(None), true) => return true,
                        (Act::Write, false) => return false,
                        _ => e = self.next[e],
                    }
                }
                false
            }
        }
    }

    fn classify(&self, n: usize) -> Move {
        match self.problem.ops[n].act {
            Act::Read(wanted) if wanted == self.state => Move::Forced,
            Act::Read(_) | Act::ReadNever => Move::Skip,
            Act::Write | Act::Delete => {
                let wanted = self.wanted;
                // Values are unique: once overwritten, a value never comes back, so a value
                // some remaining read wants must not be overwritten yet. ("Not found" can come
                // back with another delete.)
                if wanted && self.state.is_some() {
                    return Move::Skip;
                }
                // A delete counts as observed while any "not found" read remains: unlike the
                // current state's, the absence it starts has no end we could bound it by.
                let observed = match self.problem.ops[n].act {
                    Act::Write => self.readers_left[n] > 0,
                    _ => self.absent_readers_left > 0,
                };
                if !wanted && !observed {
                    Move::Forced
                } else {
                    Move::Branch
                }
            }
        }
    }

    /// Places the operation of call event `call` if that reaches a new configuration; returns
    /// whether it did.
    fn place(&mut self, call: usize, forced: bool) -> bool {
        let n = self.problem.events[call].0 as usize;
        let act = self.problem.ops[n].act;
        let step = Step {
            call,
            state_before: self.state,
            wanted_before: self.wanted,
            forced,
        };
        self.apply(n, act);
        self.placed.set(n);
        lift(
            &mut self.next,
            &mut self.prev,
            call,
            self.problem.partner[call],
        );
        self.wanted = self.compute_wanted();
        if self.seen.insert(self.placed.memo_key(self.memo_state())) {
            self.stack.push(step);
            return true;
        }
        self.undo(step);
        false
    }

    fn undo(&mut self, step: Step) {
        let n = self.problem.events[step.call].0 as usize;
        unlift(
            &mut self.next,
            &mut self.prev,
            step.call,
            self.problem.partner[step.call],
        );
        self.placed.clear(n);
        self.unapply(self.problem.ops[n].act, step.state_before);
        self.wanted = step.wanted_before;
    }

    /// Undoes moves up to and including the last branch; returns the event to resume from
    /// (the one after that branch's call), or `None` when no alternative is left.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let step = self.stack.pop()?;
            self.undo(step);
            if !step.forced {
                return Some(self.next[step.call]);
            }
        }
    }

    /// The register model. Only called with moves [`Search::classify`] allowed.
    fn apply(&mut self, n: usize, act: Act) {
        match act {
            Act::Write => self.state = Some(n as u32),
            Act::Delete => self.state = None,
            Act::Read(Some(w)) => self.readers_left[w as usize] -= 1,
            Act::Read(None) => self.absent_readers_left -= 1,
            Act::ReadNever => {}
        }
    }

    fn unapply(&mut self, act: Act, before: State) {
        self.state = before;
        match act {
            Act::Read(Some(w)) => self.readers_left[w as usize] += 1,
            Act::Read(None) => self.absent_readers_left += 1,
            _ => {}
        }
    }

    fn memo_state(&self) -> MemoState {
        match self.state {
            _ if !self.wanted => MemoState::Dead,
            None => MemoState::Absent,
            Some(w) => MemoState::Value(w),
        }
    }
}

/// Unlinks a call event and its return.
fn lift(next: &mut [usize], prev: &mut [usize], call: usize, ret: usize) {
    for e in [call, ret] {
        let (p, n) = (prev[e], next[e]);
        next[p] = n;
        if n != NIL {
            prev[n] = p;
        }
    }
}

/// Relinks what [`lift`] unlinked; correct because undos come in reverse order of lifts.
fn unlift(next: &mut [usize], prev: &mut [usize], call: usize, ret: usize) {
    for e in [ret, call] {
        let (p, n) = (prev[e], next[e]);
        next[p] = e;
        if n != NIL {
            prev[n] = e;
        }
    }
}

/// The set of placed operations.
struct Bits {
    words: Vec<u64>,
}

/// A (placed set, state) pair, stored compactly, since the memo holds up to millions of them:
/// operations are numbered by start time, so the placed set is nearly always a run of full words
/// followed by a few partial ones. `full` counts the leading full words; `rest` holds the words
/// after them up to the last non-zero one, inline when there are at most two (a trimmed run never
/// ends in a zero word, so zero padding cannot make two different runs equal).
#[derive(PartialEq, Eq, Hash)]
struct MemoKey {
    full: u32,
    state: u32,
    rest: Rest,
}

#[derive(PartialEq, Eq, Hash)]
enum Rest {
    Inline([u64; 2]),
    Spilled(Box<[u64]>),
}

impl MemoState {
    /// Operation numbers stay below `u32::MAX - 1` (see [`super::OPS_PER_KEY_MAX`]).
    fn encode(self) -> u32 {
        match self {
            MemoState::Dead => u32::MAX,
            MemoState::Absent => u32::MAX - 1,
            MemoState::Value(w) => w,
        }
    }
}

impl Bits {
    fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
        }
    }

    fn set(&mut self, n: usize) {
        self.words[n / 64] |= 1 << (n % 64);
    }

    fn clear(&mut self, n: usize) {
        self.words[n / 64] &= !(1 << (n % 64));
    }

    fn memo_key(&self, state: MemoState) -> MemoKey {
        let full = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(full, |last| (last + 1).max(full));
        let rest = match self.words.get(full..end).unwrap_or_default() {
            [] => Rest::Inline([0, 0]),
            [a] => Rest::Inline([*a, 0]),
            [a, b] => Rest::Inline([*a, *b]),
            more => Rest::Spilled(more.into()),
        };
        MemoKey {
            full: u32::try_from(full).unwrap_or(u32::MAX),
            state: state.encode(),
            rest,
        }
    }
}
