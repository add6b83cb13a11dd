"""Solutions to the exercises of notebook 01 (the tests run this file, on a small
synthetic dataset)."""

import pandas as pd
from fer_utils import data

dataset = data.get_dataset(None)
legend = data.audit_dataset(
    dataset
).legend  # one row per legend row, with source, person, width, height

# 1. Share of each emotion's images that are IMFDB crops, and how many IMFDB people
#    they show.
labelled = legend.dropna(subset=["emotion"])
imfdb = labelled[labelled.source == "IMFDB"]
table = pd.DataFrame(
    {
        "images": labelled.groupby("emotion").size(),
        "IMFDB share": (labelled.source == "IMFDB")
        .groupby(labelled.emotion)
        .mean()
        .round(2),
        "IMFDB people": imfdb.groupby("emotion")["person"].nunique(),
    }
).fillna(0)
print(table.to_string())
print("depends most on IMFDB:", table["IMFDB share"].idxmax())
assert table["IMFDB share"].between(0, 1).all()

# 2. Image sizes per source.
files = legend.dropna(subset=["width"])
sizes = (
    files[files.source == "IMFDB"]
    .groupby(["width", "height"])
    .size()
    .sort_values(ascending=False)
)
print(sizes.head(10).rename("IMFDB images").to_string())
print(files.groupby("source")["width"].median().rename("median width").to_string())
