"""Solutions to the exercises of notebook 05 (the tests run this file, on a small
synthetic dataset)."""

import fer_utils
import pandas as pd
from fer_utils import EMOTIONS, models, pipelines, training, workfolder

tf, keras = fer_utils.import_tensorflow()
WORK = workfolder.get_work_dir(None)
chosen = workfolder.read_record(WORK / workfolder.PIPELINES_RECORD)["input"]

# 1. Class weights three ways.
counts = pipelines.split_counts(WORK)["train"].reindex(EMOTIONS).tolist()
table = pd.DataFrame({"faces": counts}, index=EMOTIONS)
for choice in ("balanced", "sqrt", 0.25):
    table[str(choice)] = pd.Series(
        training.class_weights(training.TrainConfig(class_weight=choice), counts)
    ).values
print(table.round(2).to_string())
rarest = table[table.faces > 0].faces.idxmin()
print(
    f"{rarest} gains most: ×{table.loc[rarest, 'balanced']:.1f} balanced, "
    f"×{table.loc[rarest, 'sqrt']:.1f} sqrt"
)
assert (
    table.loc[rarest, "balanced"]
    >= table.loc[rarest, "sqrt"]
    >= table.loc[rarest, "0.25"]
)

# 2. With and without class weights (seed CNN, 2 epochs, nothing written).
config = training.TrainConfig(
    image_size=chosen["image_size"],
    color_mode=chosen["color_mode"],
    model="seed_cnn",
    precision="float32",
    epochs=2,
    batch_size=16,
)
first_loss = {}
for weights in ("sqrt", None):
    result = training.train(
        config.replace(class_weight=weights), WORK, write=False, show_progress=False
    )
    first_loss[weights] = round(float(result.history.loss.iloc[0]), 3)
print("training loss of epoch 1, sqrt weights vs none:", first_loss)

# 3. Early stopping: one more callback for every fit.
stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1)
result = training.train(
    config.replace(epochs=6), WORK, write=False, show_progress=False, callbacks=[stop]
)
print(f"epochs run: {len(result.history)} of 6 (stopped: {stop.stopped_epoch > 0})")
assert 2 <= len(result.history) <= 6 and models.available()
