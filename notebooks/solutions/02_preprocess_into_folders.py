"""Solutions to the exercises of notebook 02 (the tests run this file, on a small
synthetic dataset)."""

import os

from fer_utils import data, folders
from sklearn.model_selection import train_test_split

dataset = data.get_dataset(os.environ.get("FER_DATA_DIR"))
manifest = folders.build_manifest(data.audit_dataset(dataset))

# 1. Another seed: faces per split, and nobody in two splits.
split = folders.split_by_person(manifest, test_size=0.25, val_size=0.25, seed=7)
used = split[split.split.isin(folders.SPLITS)]
print(used.split.value_counts().to_dict())
in_two = int((used.groupby("group").split.nunique() > 1).sum())
print("people in more than one split:", in_two)
assert in_two == 0

# 2. A random split by hand: people in both train and test.
train, test = train_test_split(used, test_size=0.25, random_state=7)
shared = set(train.group) & set(test.group)
print(f"{len(shared)} of {test.group.nunique()} test people are also in train")
