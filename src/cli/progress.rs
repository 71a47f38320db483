//! Progress bars for the library's long stages.

use std::cell::RefCell;
use std::collections::HashMap;

use indicatif::{ProgressBar, ProgressStyle};

use crate::diffedit::{Progress, Stage};

/// One bar per stage on stderr, with ETA. indicatif hides them when stderr is not a terminal.
#[derive(Default)]
pub struct Bars {
    bars: RefCell<HashMap<Stage, ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, stage: Stage, total: usize) {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} UNet {msg} {elapsed_precise} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(stage.name());
        bar.set_message(if stage == Stage::Mask { "rows" } else { "steps" });
        self.bars.borrow_mut().insert(stage, bar);
    }
    fn advance(&self, stage: Stage, by: usize) {
        if let Some(bar) = self.bars.borrow().get(&stage) {
            bar.inc(by as u64);
        }
    }
    fn finish(&self, stage: Stage) {
        if let Some(bar) = self.bars.borrow_mut().remove(&stage) {
            bar.finish();
        }
    }
}
