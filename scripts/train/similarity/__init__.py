"""Face-embedding (similarity) training: a Siamese tower with triplet loss."""
