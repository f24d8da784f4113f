//! Analytics: the Analytics trait, its local provider and the suite every provider passes.
