//! S3 provider of Gorgon file storage, through object_store.
