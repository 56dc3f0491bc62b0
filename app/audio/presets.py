"""Named processing presets: loudness target, true-peak ceiling and the renditions delivered."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    target_lufs: float
    ceiling_dbtp: float
    formats: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "target_lufs": self.target_lufs,
            "true_peak_ceiling_dbtp": self.ceiling_dbtp,
            "formats": list(self.formats),
        }


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("podcast", "Podcast (-16 LUFS, -1 dBTP)", -16.0, -1.0, ("mp3", "aac", "opus")),
        Preset("broadcast", "Broadcast EBU R128 (-23 LUFS, -1 dBTP)", -23.0, -1.0, ("flac", "mp3")),
        Preset("streaming", "Streaming (-14 LUFS, -1 dBTP)", -14.0, -1.0, ("aac", "opus")),
    )
}
