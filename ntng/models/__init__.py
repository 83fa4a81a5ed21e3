"""The models wing: the crammed BERT and T5 v1.1 as the paper pre-trains them."""
