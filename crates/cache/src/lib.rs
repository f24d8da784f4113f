//! The cache: the Cache trait, its in-memory (moka) provider and the suite every provider passes.
