//! Labels more than one domain uses, and the closed-set labels ([`LabelValue`]) whose series are all created up
//! front.

use std::marker::PhantomData;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ServiceLabels {
    pub(super) service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

/// A label whose values are a closed set, defined by the module that counts (the proxy's unrouted kinds and
/// upstream error kinds): metrics exposes it without knowing the type.
pub trait LabelValue: Copy + 'static {
    /// Every value. Their series are created together, so each is exposed (at 0) before its first count.
    const ALL: &'static [Self];
    /// The value as exposed.
    fn as_label(self) -> &'static str;
    /// The position of `self` in [`Self::ALL`].
    fn index(self) -> usize;
}

/// One counter per value of `L`, all created up front: counting is an index and an atomic add, no lookup.
#[derive(Debug, Clone)]
pub struct LabeledCounters<L> {
    counters: Box<[Counter]>,
    _label: PhantomData<fn(L)>,
}

impl<L: LabelValue> LabeledCounters<L> {
    /// The counters of `family`, one per value of `L`, labelled by `label`.
    pub(super) fn new<S>(family: &Family<S, Counter>, label: impl Fn(&'static str) -> S) -> Self
    where
        S: Clone + std::hash::Hash + Eq,
    {
        let counters = L::ALL.iter().map(|v| family.get_or_create(&label(v.as_label())).clone()).collect();
        Self { counters, _label: PhantomData }
    }

    #[inline]
    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    #[inline]
    pub fn inc_by(&self, value: L, n: u64) {
        if let Some(c) = self.counters.get(value.index()) {
            c.inc_by(n);
        }
    }

    /// The count for `value` so far.
    pub fn get(&self, value: L) -> u64 {
        self.counters.get(value.index()).map_or(0, Counter::get)
    }
}
