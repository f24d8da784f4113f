//! File storage: the FileStore trait, its local-disk provider and the suite every provider passes.
