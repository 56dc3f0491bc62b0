from django.urls import reverse
from rest_framework import serializers

from .models import WAVEFORM_CONTENT_TYPES, Job, Rendition
from .presets import PRESETS


class RenditionSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Rendition
        fields = [
            "format",
            "content_type",
            "size",
            "loudness",
            "gain_db",
            "within_target",
            "note",
            "download_url",
        ]

    def get_download_url(self, rendition: Rendition) -> str:
        path = reverse("audio-api:job-rendition", args=[rendition.job_id, rendition.format])
        return self.context["request"].build_absolute_uri(path)


class JobSerializer(serializers.ModelSerializer):
    renditions = RenditionSerializer(many=True, read_only=True)
    waveform = serializers.SerializerMethodField()
    loudness_after = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "status",
            "phase",
            "progress",
            "error",
            "preset",
            "original_name",
            "source_size",
            "source_metadata",
            "loudness_before",
            "loudness_after",
            "renditions",
            "waveform",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_waveform(self, job: Job) -> dict[str, str] | None:
        if not job.has_waveform:
            return None
        request = self.context["request"]
        return {
            kind: request.build_absolute_uri(reverse("audio-api:job-waveform", args=[job.pk, kind]))
            for kind in WAVEFORM_CONTENT_TYPES
        }

    def get_loudness_after(self, job: Job) -> dict[str, dict]:
        return {r.format: r.loudness for r in job.renditions.all()}


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True, use_url=False)
    preset = serializers.ChoiceField(choices=sorted(PRESETS))
