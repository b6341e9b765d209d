"""Drawing detections the way the original demo did."""
import cv2

BOX_COLOR = (0, 255, 0)
POINT_COLOR = (0, 0, 255)
LABEL_BACKGROUND = (255, 0, 0)
LABEL_COLOR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def face_label(face):
    """The original's label text ``"<age>, F|M"``; a video face with a track shows its track id and the
    track's smoothed values instead: ``"#<track> <age_track>, F|M"``."""
    if face.get("track") is not None:
        return f"#{face['track']} {round(face['age_track'])}, {'M' if face['gender_track'] > 0.5 else 'F'}"
    return f"{face['age']}, {face['gender']}"


def draw_faces(image, faces):
    """Draw boxes, landmarks and "age, F|M" labels on a copy of a BGR image and return it.

    Unlike the original, a label that would leave the top of the picture is drawn just inside it.
    """
    canvas = image.copy()
    for face in faces:
        x1, y1, x2, y2 = (int(v) for v in face["bbox"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, 2)
        for x, y in face.get("landmarks") or []:
            cv2.circle(canvas, (int(x), int(y)), 1, POINT_COLOR, 2)
        text = face_label(face)
        (width, height), _ = cv2.getTextSize(text, FONT, 1, 2)
        top = max(y1, height)
        cv2.rectangle(canvas, (x1, top - height), (x1 + width, top), LABEL_BACKGROUND, cv2.FILLED)
        cv2.putText(canvas, text, (x1, top), FONT, 1, LABEL_COLOR, 2)
    return canvas
